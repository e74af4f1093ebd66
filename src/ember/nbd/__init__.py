"""Serve a block device over NBD, and expose an NBD export as a local block device."""

from ember.nbd.attach import (
    AttachedDevice,
    AttachMethod,
    NbdDevicePool,
    attach_export,
    attach_fuse,
    attach_kernel,
    kernel_nbd_available,
)
from ember.nbd.client import Endpoint, ExportInfo, connect, parse_url
from ember.nbd.protocol import NbdError, ProtocolViolation
from ember.nbd.server import Disk, NbdServer
from ember.nbd.thread import NbdServerThread, ServerState

__all__ = [
    "AttachMethod",
    "AttachedDevice",
    "Disk",
    "Endpoint",
    "ExportInfo",
    "NbdDevicePool",
    "NbdError",
    "NbdServer",
    "NbdServerThread",
    "ProtocolViolation",
    "ServerState",
    "attach_export",
    "attach_fuse",
    "attach_kernel",
    "connect",
    "kernel_nbd_available",
    "parse_url",
]

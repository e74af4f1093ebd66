"""Typed request bodies for Firecracker's API, as version 1.12 accepts them.

Each record names the endpoint it is sent to and encodes itself with ``to_json()``; optional
fields left at ``None`` are omitted, so Firecracker applies its own default. The bodies::

    PUT /boot-source              {kernel_image_path, boot_args?, initrd_path?}
    PUT /drives/{drive_id}        {drive_id, path_on_host, is_root_device, is_read_only, io_engine?}
    PUT /network-interfaces/{id}  {iface_id, host_dev_name, guest_mac?}
    PUT /machine-config           {vcpu_count, mem_size_mib, smt, track_dirty_pages, huge_pages?}
    PUT /vsock                    {guest_cid, uds_path}
    PUT /metrics                  {metrics_path}
    PUT /mmds/config              {version: "V2", network_interfaces: [...]}
    PUT /snapshot/create          {snapshot_type: "Full"|"Diff", snapshot_path, mem_file_path}
    PUT /snapshot/load            {snapshot_path, mem_backend: {backend_type: "File"|"Uffd",
                                   backend_path}, enable_diff_snapshots, resume_vm}

Version notes: ``/snapshot/load`` rejects ``track_dirty_pages`` (400, unknown field) and takes
``enable_diff_snapshots`` instead; ``/machine-config`` takes ``track_dirty_pages``. E2B's fork
adds ``use_memfd``/``use_sync_wp`` to the memory backend; upstream 1.12 rejects them, so they
are not offered here.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JsonObject = dict[str, Any]


class IoEngine(enum.Enum):
    """How Firecracker performs a drive's I/O (the seed uses Sync for template builds)."""

    SYNC = "Sync"
    ASYNC = "Async"


class HugePages(enum.Enum):
    """Guest RAM page size on the host."""

    NONE = "None"
    SIZE_2M = "2M"


class SnapshotType(enum.Enum):
    """Full writes all guest RAM; Diff only the pages dirtied since the last snapshot."""

    FULL = "Full"
    DIFF = "Diff"


class MemoryBackendType(enum.Enum):
    """Where a restored guest's RAM comes from: a file mapped privately, or a userfaultfd server."""

    FILE = "File"
    UFFD = "Uffd"


@dataclass(frozen=True)
class BootSource:
    """The guest kernel (an ELF; Firecracker enters it in 64-bit mode) and its command line."""

    kernel_image_path: Path
    boot_args: str | None = None
    initrd_path: Path | None = None

    def to_json(self) -> JsonObject:
        body: JsonObject = {"kernel_image_path": str(self.kernel_image_path)}
        if self.boot_args is not None:
            body["boot_args"] = self.boot_args
        if self.initrd_path is not None:
            body["initrd_path"] = str(self.initrd_path)
        return body


@dataclass(frozen=True)
class Drive:
    """A virtio-blk disk backed by a host file or block device (which must exist at boot)."""

    drive_id: str
    path_on_host: Path
    is_root_device: bool = False
    is_read_only: bool = False
    io_engine: IoEngine | None = None

    def to_json(self) -> JsonObject:
        body: JsonObject = {
            "drive_id": self.drive_id,
            "path_on_host": str(self.path_on_host),
            "is_root_device": self.is_root_device,
            "is_read_only": self.is_read_only,
        }
        if self.io_engine is not None:
            body["io_engine"] = self.io_engine.value
        return body


@dataclass(frozen=True)
class NetworkInterface:
    """A virtio-net device on a tap that exists in Firecracker's network namespace."""

    iface_id: str
    host_dev_name: str
    guest_mac: str | None = None

    def to_json(self) -> JsonObject:
        body: JsonObject = {"iface_id": self.iface_id, "host_dev_name": self.host_dev_name}
        if self.guest_mac is not None:
            body["guest_mac"] = self.guest_mac
        return body


@dataclass(frozen=True)
class MachineConfig:
    """vCPUs and RAM; ``track_dirty_pages`` must be on for a Diff snapshot of a cold-booted VM."""

    vcpu_count: int = 1
    mem_size_mib: int = 128
    smt: bool = False
    track_dirty_pages: bool = False
    huge_pages: HugePages | None = None

    @property
    def memory_bytes(self) -> int:
        return self.mem_size_mib << 20

    def to_json(self) -> JsonObject:
        body: JsonObject = {
            "vcpu_count": self.vcpu_count,
            "mem_size_mib": self.mem_size_mib,
            "smt": self.smt,
            "track_dirty_pages": self.track_dirty_pages,
        }
        if self.huge_pages is not None:
            body["huge_pages"] = self.huge_pages.value
        return body


@dataclass(frozen=True)
class Vsock:
    """A virtio-vsock device; Firecracker listens on ``uds_path`` (which must not exist yet)."""

    guest_cid: int
    uds_path: Path

    def to_json(self) -> JsonObject:
        return {"guest_cid": self.guest_cid, "uds_path": str(self.uds_path)}


@dataclass(frozen=True)
class Metrics:
    """Where Firecracker writes its JSON metrics (an existing file or FIFO)."""

    metrics_path: Path

    def to_json(self) -> JsonObject:
        return {"metrics_path": str(self.metrics_path)}


@dataclass(frozen=True)
class MmdsConfig:
    """The metadata service, reachable by the guest through the listed interfaces (V2: token API)."""

    network_interfaces: tuple[str, ...]
    version: str = "V2"

    def to_json(self) -> JsonObject:
        return {"version": self.version, "network_interfaces": list(self.network_interfaces)}


@dataclass(frozen=True)
class MmdsMetadata:
    """What the seed puts in MMDS for envd; the JSON names differ from the field names on purpose."""

    sandbox_id: str
    template_id: str
    logs_address: str = "http://192.0.2.1/logs"
    access_token: str | None = None

    def to_json(self) -> JsonObject:
        token = (self.access_token or "").encode()
        return {
            "instanceID": self.sandbox_id,
            "envID": self.template_id,
            "address": self.logs_address,
            "accessTokenHash": hashlib.sha512(token).hexdigest(),
        }


@dataclass(frozen=True)
class SnapshotCreate:
    """Save a paused VM: device state to ``snapshot_path``, RAM (all, or dirty pages) to ``mem_file_path``."""

    snapshot_path: Path
    mem_file_path: Path
    snapshot_type: SnapshotType = SnapshotType.FULL

    def to_json(self) -> JsonObject:
        return {
            "snapshot_type": self.snapshot_type.value,
            "snapshot_path": str(self.snapshot_path),
            "mem_file_path": str(self.mem_file_path),
        }


@dataclass(frozen=True)
class MemoryBackend:
    """A memory file (``File``) or the unix socket of a page-fault server (``Uffd``)."""

    backend_type: MemoryBackendType
    backend_path: Path

    def to_json(self) -> JsonObject:
        return {"backend_type": self.backend_type.value, "backend_path": str(self.backend_path)}


@dataclass(frozen=True)
class SnapshotLoad:
    """Restore into a fresh Firecracker (nothing configured yet)."""

    snapshot_path: Path
    mem_backend: MemoryBackend
    enable_diff_snapshots: bool = False
    resume_vm: bool = False

    def to_json(self) -> JsonObject:
        return {
            "snapshot_path": str(self.snapshot_path),
            "mem_backend": self.mem_backend.to_json(),
            "enable_diff_snapshots": self.enable_diff_snapshots,
            "resume_vm": self.resume_vm,
        }


@dataclass(frozen=True)
class FirecrackerConfig:
    """Everything a cold boot configures, in the order ``FirecrackerVm.boot`` sends it."""

    boot_source: BootSource
    machine: MachineConfig = MachineConfig()
    drives: tuple[Drive, ...] = ()
    network_interfaces: tuple[NetworkInterface, ...] = ()
    mmds: MmdsConfig | None = None
    vsock: Vsock | None = None
    metrics: Metrics | None = None
    name: str = "ember"

"""Firecracker's guest memory served from a memfile build through userfaultfd (facts file 4.5).

``PageServer`` listens on the socket named in ``/snapshot/load``'s ``Uffd`` backend, receives
Firecracker's regions and userfaultfd (``handshake``), and installs each faulting page from
the build (``ioctl``), tracking page states and first accesses (``tracker``).
``export_memory_diff_snapshot`` turns a Diff snapshot of the served VM into a child memfile
build's data and header.
"""

from ember.uffd.export import export_memory_diff_snapshot
from ember.uffd.handshake import (
    ACCEPT_TIMEOUT_S,
    PAGE_SIZES,
    Handshake,
    HandshakeListener,
    Region,
    parse_regions,
    receive_handshake,
)
from ember.uffd.ioctl import (
    InstallResult,
    UffdMessage,
    Userfaultfd,
    negotiate_api,
    open_userfaultfd,
    register,
)
from ember.uffd.server import PageServer, PageServerStats, PageSource
from ember.uffd.tracker import AccessRecorder, AccessType, PageState, PageTracker

__all__ = [
    "ACCEPT_TIMEOUT_S",
    "PAGE_SIZES",
    "AccessRecorder",
    "AccessType",
    "Handshake",
    "HandshakeListener",
    "InstallResult",
    "PageServer",
    "PageServerStats",
    "PageSource",
    "PageState",
    "PageTracker",
    "Region",
    "UffdMessage",
    "Userfaultfd",
    "export_memory_diff_snapshot",
    "negotiate_api",
    "open_userfaultfd",
    "parse_regions",
    "receive_handshake",
    "register",
]

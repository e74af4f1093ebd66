"""Receiving guest memory from Firecracker: its regions and its userfaultfd, over a unix socket.

Firecracker's ``PUT /snapshot/load`` with ``mem_backend {"backend_type": "Uffd",
"backend_path": <socket>}`` connects to the socket and sends one message (facts file 4.5)::

    payload   JSON array, one object per guest memory region:
              [{"base_host_virt_addr": 140...,   where the region is mapped in Firecracker
                "size": 67108864,                bytes
                "offset": 0,                     where the region starts in the memory file
                "page_size": 4096,               bytes (newer Firecracker)
                "page_size_kib": 4096}, ...]     bytes too, despite the name (1.12, deprecated)
    SCM_RIGHTS  fd 0: the userfaultfd, already registered by Firecracker
                fd 1: (optional) a memfd holding guest memory (E2B's fork with use_memfd)

Guarantees: a handshake is returned only when the payload describes page-aligned,
non-overlapping regions that all use one page size (4 KiB or 2 MiB) and the first fd really
is a userfaultfd. Anything else raises ``VmError`` with every received fd already closed,
so a bogus or hostile peer leaks nothing.
"""

from __future__ import annotations

import array
import itertools
import json
import os
import select
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ember.errors import VmError

PAGE_SIZES: Final = (4096, 2 << 20)
ACCEPT_TIMEOUT_S: Final = 10.0
MAX_REGIONS: Final = 256
_MAX_PAYLOAD_BYTES: Final = 64 << 10
_MAX_FDS: Final = 4
_ADDRESS_LIMIT: Final = 1 << 64
_UFFD_LINK: Final = "anon_inode:[userfaultfd]"
_REGION_FIELDS: Final = ("base_host_virt_addr", "size", "offset", "page_size")


@dataclass(frozen=True, slots=True)
class Region:
    """Host addresses ``[base, base+size)`` hold memfile bytes ``[offset, offset+size)``."""

    base_host_virt_addr: int
    size: int
    offset: int
    page_size: int

    @property
    def end_host_virt_addr(self) -> int:
        return self.base_host_virt_addr + self.size


@dataclass(frozen=True)
class Handshake:
    """What Firecracker handed over. Owns the fds: ``close()`` them when the VM is gone."""

    regions: tuple[Region, ...]
    uffd: int
    memfd: int | None

    @property
    def page_size(self) -> int:
        return self.regions[0].page_size

    def close(self) -> None:
        for fd in (self.uffd, self.memfd):
            if fd is not None:
                os.close(fd)


def parse_regions(payload: bytes) -> tuple[Region, ...]:
    """Decode and validate Firecracker's region list (see the module docstring)."""
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"the payload is not JSON ({exc})") from exc
    if not isinstance(document, list) or not 0 < len(document) <= MAX_REGIONS:
        raise _bad(f"expected a JSON array of 1 to {MAX_REGIONS} regions")
    regions = tuple(_region(entry, index) for index, entry in enumerate(document))
    page_sizes = {region.page_size for region in regions}
    if len(page_sizes) != 1:
        raise _bad(f"regions use different page sizes {sorted(page_sizes)}; all must use one")
    spans = {
        "host address": [(r.base_host_virt_addr, r.end_host_virt_addr) for r in regions],
        "memory file": [(r.offset, r.offset + r.size) for r in regions],
    }
    for name, ranges in spans.items():
        for (_, end), (start, _) in itertools.pairwise(sorted(ranges)):
            if end > start:
                raise _bad(f"regions overlap in {name} range at {start:#x}")
    return regions


def _region(entry: Any, index: int) -> Region:
    if not isinstance(entry, dict):
        raise _bad(f"region {index} is not a JSON object")
    values = [entry.get(name) for name in _REGION_FIELDS[:3]]
    values.append(entry.get("page_size", entry.get("page_size_kib")))
    numbers: list[int] = []
    for name, value in zip(_REGION_FIELDS, values, strict=True):
        if type(value) is not int or not 0 <= value < _ADDRESS_LIMIT:
            raise _bad(f"region {index} field {name!r} is {value!r}, not an unsigned 64-bit integer")
        numbers.append(value)
    region = Region(*numbers)
    if region.page_size not in PAGE_SIZES:
        raise _bad(f"region {index} has page size {region.page_size}; only 4096 and 2097152 are served")
    if region.size == 0 or region.end_host_virt_addr > _ADDRESS_LIMIT:
        raise _bad(f"region {index} has size {region.size} at {region.base_host_virt_addr:#x}")
    for name in ("base_host_virt_addr", "size", "offset"):
        if getattr(region, name) % region.page_size:
            raise _bad(f"region {index} field {name!r} is not a multiple of its page size {region.page_size}")
    return region


def _bad(reason: str) -> VmError:
    return VmError(
        f"invalid guest memory handshake: {reason}; the peer on the page server's socket is not a "
        "Firecracker this server understands (use Firecracker >= 1.10 with the Uffd backend)"
    )


class HandshakeListener:
    """The unix socket Firecracker connects to; listening from construction, so start it first.

    The socket is world-connectable (mode 0777) because Firecracker may run as another user
    (jailer); it is removed by ``close()``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._socket.bind(str(path))
            os.chmod(path, 0o777)
            self._socket.listen(1)
        except OSError as exc:
            self._socket.close()
            raise VmError(
                f"cannot listen on {path}: {exc}; check the directory exists and is writable"
            ) from exc

    def accept(self, timeout_s: float = ACCEPT_TIMEOUT_S, cancel_fd: int | None = None) -> Handshake | None:
        """The first peer's handshake; None if ``cancel_fd`` became readable first."""
        watched = [self._socket.fileno()] + ([cancel_fd] if cancel_fd is not None else [])
        readable, _, _ = select.select(watched, [], [], timeout_s)
        if cancel_fd is not None and cancel_fd in readable:
            return None
        if not readable:
            raise VmError(
                f"nothing connected to {self.path} within {timeout_s:.0f} s: load the snapshot with "
                f"mem_backend Uffd and backend_path {self.path} after starting the page server"
            )
        connection, _ = self._socket.accept()
        with connection:
            connection.settimeout(timeout_s)
            return receive_handshake(connection)

    def close(self) -> None:
        self._socket.close()
        self.path.unlink(missing_ok=True)


def receive_handshake(connection: socket.socket) -> Handshake:
    """Read the one message: regions JSON plus 1 or 2 fds (see the module docstring)."""
    fds = array.array("i")
    try:
        payload, ancillary, flags, _ = connection.recvmsg(
            _MAX_PAYLOAD_BYTES, socket.CMSG_SPACE(_MAX_FDS * fds.itemsize)
        )
    except OSError as exc:
        raise VmError(f"cannot receive Firecracker's memory handshake: {exc}") from exc
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    try:
        if flags & socket.MSG_CTRUNC or not 1 <= len(fds) <= 2:
            raise _bad(f"expected 1 or 2 file descriptors, received {len(fds)}")
        regions = parse_regions(payload)
        link = os.readlink(f"/proc/self/fd/{fds[0]}")
        if link != _UFFD_LINK:
            raise _bad(f"the first file descriptor is {link!r}, not a userfaultfd")
        os.set_blocking(fds[0], False)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return Handshake(regions, fds[0], fds[1] if len(fds) == 2 else None)

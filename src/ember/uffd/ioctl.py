"""userfaultfd through ctypes: the syscall, the ioctls a page server issues, and ``uffd_msg``.

Layouts (x86_64 and aarch64, little-endian; every field u64 unless marked)::

    uffdio_api        0  api (0xAA)    8  features      16 ioctls                  24 bytes
    uffdio_register   0  start   8 len  16 mode          24 ioctls                  32 bytes
    uffdio_range      0  start   8 len                                              16 bytes
    uffdio_copy       0  dst     8 src  16 len   24 mode  32 copy (s64)             40 bytes
    uffdio_zeropage   0  start   8 len  16 mode  24 zeropage (s64)                  32 bytes
    uffdio_writeprotect 0 start  8 len  16 mode                                     24 bytes

    uffd_msg (32 bytes, packed)
      0 event (u8)   1..7 reserved
      PAGEFAULT 0x12:  8 flags (WRITE=1, WP=2, MINOR=4)   16 address   24 ptid (u32)
      REMOVE    0x15:  8 start                            16 end
      other events (FORK, REMAP, UNMAP): not requested by Firecracker; reported as-is

An install (COPY, ZEROPAGE) either maps the range and wakes the faulting threads, or fails
with an errno the server must act on: EEXIST (something is already mapped: wake the
waiters), ESRCH (the faulting process is gone: drop the fault), EAGAIN (the mappings are
changing, or a hugetlb copy stopped part way: serve the fault again later). Those three come
back as an ``InstallResult``; any other errno raises ``VmError``.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import platform
import struct
from dataclasses import dataclass
from typing import Final

from ember.errors import VmError

_SYSCALL_NUMBERS: Final = {"x86_64": 323, "aarch64": 282}

UFFD_API: Final = 0xAA
UFFDIO_API: Final = 0xC018AA3F
UFFDIO_REGISTER: Final = 0xC020AA00
UFFDIO_WAKE: Final = 0x8010AA02
UFFDIO_COPY: Final = 0xC028AA03
UFFDIO_ZEROPAGE: Final = 0xC020AA04
UFFDIO_WRITEPROTECT: Final = 0xC018AA06

REGISTER_MODE_MISSING: Final = 1
REGISTER_MODE_WP: Final = 2
COPY_MODE_WP: Final = 2
WRITEPROTECT_MODE_WP: Final = 1

FEATURE_EVENT_REMOVE: Final = 1 << 3
FEATURE_MISSING_HUGETLBFS: Final = 1 << 4

EVENT_PAGEFAULT: Final = 0x12
EVENT_REMOVE: Final = 0x15
PAGEFAULT_FLAG_WRITE: Final = 1
PAGEFAULT_FLAG_WP: Final = 2
PAGEFAULT_FLAG_MINOR: Final = 4

MESSAGE_BYTES: Final = 32
_MESSAGE: Final = struct.Struct("<B7xQQ8x")


class _Api(ctypes.Structure):
    _fields_ = (("api", ctypes.c_uint64), ("features", ctypes.c_uint64), ("ioctls", ctypes.c_uint64))


class _Register(ctypes.Structure):
    _fields_ = (
        ("start", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("ioctls", ctypes.c_uint64),
    )


class _Range(ctypes.Structure):
    _fields_ = (("start", ctypes.c_uint64), ("len", ctypes.c_uint64))


class _Copy(ctypes.Structure):
    _fields_ = (
        ("dst", ctypes.c_uint64),
        ("src", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("copy", ctypes.c_int64),
    )


class _Zeropage(ctypes.Structure):
    _fields_ = (("range", _Range), ("mode", ctypes.c_uint64), ("zeropage", ctypes.c_int64))


class _WriteProtect(ctypes.Structure):
    _fields_ = (("range", _Range), ("mode", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)


class InstallResult(enum.Enum):
    """What an install ioctl did; every value but INSTALLED means no new page was mapped."""

    INSTALLED = "installed"
    EXISTS = "exists"
    GONE = "gone"
    RETRY = "retry"


_RESULTS: Final = {errno.EEXIST: InstallResult.EXISTS, errno.ESRCH: InstallResult.GONE}


@dataclass(frozen=True, slots=True)
class UffdMessage:
    """One decoded ``uffd_msg``: for PAGEFAULT ``(flags, address)``, for REMOVE ``(start, end)``."""

    event: int
    first: int
    second: int

    @property
    def is_write(self) -> bool:
        return bool(self.first & PAGEFAULT_FLAG_WRITE)


def parse_messages(data: bytes | memoryview) -> list[UffdMessage]:
    """Every whole message in ``data`` (a read of the uffd returns whole messages only)."""
    whole = data[: len(data) // MESSAGE_BYTES * MESSAGE_BYTES]
    return [UffdMessage(*fields) for fields in _MESSAGE.iter_unpack(whole)]


def open_userfaultfd(*, nonblocking: bool = True) -> int:
    """A new userfaultfd (close-on-exec), not yet through the API handshake."""
    number = _SYSCALL_NUMBERS.get(platform.machine())
    if number is None:
        raise VmError(f"userfaultfd is not wired up for {platform.machine()}: use an x86_64 or aarch64 host")
    flags = os.O_CLOEXEC | (os.O_NONBLOCK if nonblocking else 0)
    fd = int(_libc.syscall(number, flags))
    if fd < 0:
        raise _os_error("userfaultfd()", "run as root or set vm.unprivileged_userfaultfd=1")
    return fd


def negotiate_api(fd: int, features: int) -> int:
    """UFFDIO_API with the ``features`` wanted; returns every feature the kernel offers."""
    api = _Api(UFFD_API, features, 0)
    _call(fd, UFFDIO_API, ctypes.byref(api), "UFFDIO_API")
    return int(api.features)


def register(fd: int, start: int, length: int, mode: int) -> int:
    """Register ``[start, start+length)`` (the VMM's job); returns the ioctls allowed on it."""
    request = _Register(start, length, mode, 0)
    _call(fd, UFFDIO_REGISTER, ctypes.byref(request), "UFFDIO_REGISTER")
    return int(request.ioctls)


class Userfaultfd:
    """The install ioctls on one userfaultfd, with their argument structs allocated once.

    Not thread safe: each thread that installs pages needs its own instance (they may share
    the fd). The fd is borrowed; whoever received it closes it.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._copy = _Copy()
        self._zeropage = _Zeropage()
        self._range = _Range()
        self._protect = _WriteProtect()
        self._copy_ref = ctypes.byref(self._copy)
        self._zeropage_ref = ctypes.byref(self._zeropage)

    def copy(self, dst: int, src: int, length: int, *, write_protect: bool = False) -> InstallResult:
        """UFFDIO_COPY ``length`` bytes from our ``src`` to the faulting process's ``dst``."""
        request = self._copy
        request.dst, request.src, request.len = dst, src, length
        request.mode = COPY_MODE_WP if write_protect else 0
        if _libc.ioctl(self.fd, UFFDIO_COPY, self._copy_ref) == 0:
            return InstallResult.INSTALLED
        return _install_failure("UFFDIO_COPY", dst, length)

    def zeropage(self, dst: int, length: int) -> InstallResult:
        """UFFDIO_ZEROPAGE: map the shared zero page (anonymous 4 KiB pages only)."""
        request = self._zeropage
        request.range.start, request.range.len, request.mode = dst, length, 0
        if _libc.ioctl(self.fd, UFFDIO_ZEROPAGE, self._zeropage_ref) == 0:
            return InstallResult.INSTALLED
        return _install_failure("UFFDIO_ZEROPAGE", dst, length)

    def wake(self, start: int, length: int) -> None:
        """Wake the threads waiting on ``[start, start+length)`` without mapping anything."""
        self._range.start, self._range.len = start, length
        _call(self.fd, UFFDIO_WAKE, ctypes.byref(self._range), "UFFDIO_WAKE", tolerate=(errno.ESRCH,))

    def write_protect(self, start: int, length: int, *, protect: bool) -> None:
        """Arm (``protect``) or clear write protection; clearing also wakes the blocked writers."""
        request = self._protect
        request.range.start, request.range.len = start, length
        request.mode = WRITEPROTECT_MODE_WP if protect else 0
        _call(
            self.fd,
            UFFDIO_WRITEPROTECT,
            ctypes.byref(request),
            "UFFDIO_WRITEPROTECT",
            tolerate=(errno.ESRCH,),
        )


def _install_failure(name: str, dst: int, length: int) -> InstallResult:
    code = ctypes.get_errno()
    result = _RESULTS.get(code)
    if result is not None:
        return result
    if code == errno.EAGAIN:
        return InstallResult.RETRY
    raise VmError(
        f"{name} of {length} bytes at {dst:#x} failed: {os.strerror(code)}; the region is not registered "
        "for this mode (write-protect installs need a VMM that registers WP) or the address is wrong"
    )


def _call(fd: int, request: int, argument: object, name: str, tolerate: tuple[int, ...] = ()) -> None:
    if _libc.ioctl(fd, request, argument) == 0:
        return
    if ctypes.get_errno() in tolerate:
        return
    raise _os_error(name, "check that the fd is a userfaultfd and the range is registered")


def _os_error(name: str, advice: str) -> VmError:
    code = ctypes.get_errno()
    return VmError(f"{name} failed: {os.strerror(code)} (errno {code}); {advice}")

"""The FUSE file system behind ``LazyMemory``: one fixed-size file whose bytes are an ``Overlay``.

::

    /                 directory, 0755
    /memfile          regular file, 0600, size = device size (truncate to any other size: EPERM)

    FUSE READ  (offset, size) -> Overlay.read_at     pages never written come from the base device
    FUSE WRITE (offset, data) -> Overlay.write_at    all-zero pages become ZERO, others DIRTY
    FLUSH / FSYNC / RELEASE   -> nothing to do        the overlay's cache file is scratch space

Every callback runs on the FUSE loop's thread with the GIL held. The object is passed to
``mfusepy.FUSE``, which registers exactly the callbacks defined here; libfuse refuses the
rest (create, unlink, rename, ...). Errors reach the kernel as errno values: a failed
base read is EIO, which the process mapping the file sees as SIGBUS.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import stat
import threading
import time
from dataclasses import dataclass
from typing import Final

from ember.block import BaseDevice, Overlay
from ember.errors import EmberError

_log = logging.getLogger(__name__)

_ROOT: Final = "/"


@dataclass(frozen=True)
class LazyMemoryStats:
    """Traffic through the memory file since it was mounted.

    ``base_reads`` / ``base_read_bytes`` count what reached the build (pages never
    written here): the lazily loaded part of guest RAM.
    """

    reads: int
    read_bytes: int
    base_reads: int
    base_read_bytes: int
    writes: int
    written_bytes: int


class TrafficCounters:
    """Shared by the FUSE thread and readers of ``stats``; one lock, taken once per request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reads = self.read_bytes = 0
        self.base_reads = self.base_read_bytes = 0
        self.writes = self.written_bytes = 0

    def stats(self) -> LazyMemoryStats:
        with self.lock:
            return LazyMemoryStats(
                reads=self.reads,
                read_bytes=self.read_bytes,
                base_reads=self.base_reads,
                base_read_bytes=self.base_read_bytes,
                writes=self.writes,
                written_bytes=self.written_bytes,
            )


class CountingDevice:
    """The base device, counting what the overlay reads from it."""

    def __init__(self, base: BaseDevice, counters: TrafficCounters) -> None:
        self._base = base
        self._counters = counters

    @property
    def size(self) -> int:
        return self._base.size

    def readinto(self, buffer: bytearray | memoryview, offset: int) -> int:
        count = self._base.readinto(buffer, offset)
        with self._counters.lock:
            self._counters.base_reads += 1
            self._counters.base_read_bytes += count
        return count


class MemoryFileSystem:
    """The mfusepy operations of a filesystem holding one fixed-size file backed by ``overlay``.

    mfusepy registers only the callbacks an operations object defines, so everything not
    here (create, unlink, rename, ...) is refused by libfuse itself.
    """

    use_ns = True  # times in nanoseconds; mfusepy warns about float times otherwise

    def __init__(
        self, overlay: Overlay, file_name: str, counters: TrafficCounters, ready: threading.Event
    ) -> None:
        self._overlay = overlay
        self._file = _ROOT + file_name
        self._name = file_name
        self._counters = counters
        self._ready = ready
        self._time_ns = time.time_ns()

    def init(self, path: str) -> None:
        _restore_default_signals()
        self._ready.set()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        times = {"st_atime": self._time_ns, "st_mtime": self._time_ns, "st_ctime": self._time_ns}
        if path == _ROOT:
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, **times}
        self._require_file(path)
        size = self._overlay.size
        return {
            "st_mode": stat.S_IFREG | 0o600,
            "st_nlink": 1,
            "st_size": size,
            "st_blocks": size // 512,
            **times,
        }

    def readdir(self, path: str, fh: int) -> list[str]:
        if path != _ROOT:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        return [".", "..", self._name]

    def open(self, path: str, flags: int) -> int:
        self._require_file(path)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if offset >= self._overlay.size:
            return b""
        try:
            data = self._overlay.read_at(offset, size)
        except EmberError as exc:
            _log.error("memory file read of %d bytes at %d failed: %s", size, offset, exc)
            raise OSError(errno.EIO, str(exc)) from exc
        with self._counters.lock:
            self._counters.reads += 1
            self._counters.read_bytes += len(data)
        return data

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if offset + len(data) > self._overlay.size:
            raise OSError(errno.EFBIG, "the memory file has a fixed size")
        try:
            self._overlay.write_at(data, offset)
        except EmberError as exc:
            _log.error("memory file write of %d bytes at %d failed: %s", len(data), offset, exc)
            raise OSError(errno.EIO, str(exc)) from exc
        with self._counters.lock:
            self._counters.writes += 1
            self._counters.written_bytes += len(data)
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self._require_file(path)
        if length != self._overlay.size:
            raise OSError(errno.EPERM, "the memory file has a fixed size")
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        return 0

    def _require_file(self, path: str) -> None:
        if path != self._file:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))


def _restore_default_signals() -> None:
    """Undo libfuse's SIGHUP/SIGTERM handlers, which would end the mount instead of the process.

    libfuse installs them only over SIG_DFL, and removes them only if still its own; so
    where Python holds no handler of its own, putting SIG_DFL back leaves the process's
    signal behaviour exactly as it was before the mount.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.signal.restype = ctypes.c_void_p
    for signum in (signal.SIGHUP, signal.SIGTERM):
        if signal.getsignal(signum) in (signal.SIG_DFL, None):
            libc.signal(signum, int(signal.SIG_DFL))

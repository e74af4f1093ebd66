"""The FUSE file system behind ``LazyMemory``: one fixed-size file whose bytes are an ``Overlay``.

::

    /                 directory, 0755
    /memfile          regular file, 0600, size = device size (truncate to any other size: EPERM)

    FUSE READ  (offset, size) -> Overlay.readinto    into libfuse's buffer; unwritten pages come from the base
    FUSE WRITE (offset, data) -> Overlay.write_at    all-zero pages become ZERO, others DIRTY
    FLUSH / FSYNC / RELEASE   -> nothing to do        the overlay's cache file is scratch space

Every READ and WRITE is also recorded (``AccessRecorder``: first access of each page, for
prefetch data); a READ from a thread registered as a prefetcher counts as a prefetch.

Every callback runs on the FUSE loop's thread with the GIL held. The object is passed to
``DirectReadFUSE`` (mfusepy's ``FUSE`` with reads filled in place), which registers exactly
the callbacks defined here; libfuse refuses the
rest (create, unlink, rename, ...). Errors reach the kernel as errno values: a base read
that still fails after ``READ_RETRY_DELAYS_S`` is EIO (the process mapping the file sees
SIGBUS), and the first such failure is kept, so the owner can fail the resume with it.
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ember.block import BaseDevice, Overlay
from ember.build.retry import READ_RETRY_DELAYS_S as READ_RETRY_DELAYS_S  # LazyMemory's default
from ember.build.retry import read_with_retries
from ember.errors import EmberError, StorageError
from ember.memory.prefetch import AccessKind, AccessRecorder

_log = logging.getLogger(__name__)

_ROOT: Final = "/"


@dataclass(frozen=True)
class LazyMemoryStats:
    """Traffic through the memory file since it was mounted.

    ``base_reads`` / ``base_read_bytes`` count what reached the build (pages never
    written here): the lazily loaded part of guest RAM. ``pages_prefetched`` were first
    loaded by a prefetcher; ``pages_reread`` were read through FUSE again after a first
    read (0 while the kernel keeps every page it was given).
    """

    reads: int
    read_bytes: int
    base_reads: int
    base_read_bytes: int
    writes: int
    written_bytes: int
    base_read_retries: int = 0
    pages_prefetched: int = 0
    pages_reread: int = 0


class TrafficCounters:
    """Shared by the FUSE thread and readers of ``stats``; one lock, taken once per request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reads = self.read_bytes = 0
        self.base_reads = self.base_read_bytes = self.base_read_retries = 0
        self.writes = self.written_bytes = 0
        self.failure: str | None = None
        self.failures = 0

    def stats(self, recorder: AccessRecorder) -> LazyMemoryStats:
        with self.lock:
            counts = (self.reads, self.read_bytes, self.base_reads, self.base_read_bytes)
            writes, written, retries = self.writes, self.written_bytes, self.base_read_retries
        return LazyMemoryStats(
            *counts,
            writes=writes,
            written_bytes=written,
            base_read_retries=retries,
            pages_prefetched=recorder.count(AccessKind.PREFETCH),
            pages_reread=recorder.pages_reread,
        )

    def fail(self, message: str) -> bool:
        """Keep the first failure, the one that explains the rest; whether this was it.

        Only the first is logged: a full disk fails every later write too, and hundreds of
        identical lines would bury the one that says what happened.
        """
        with self.lock:
            self.failures += 1
            if self.failure is None:
                self.failure = message
                return True
            return False


class CountingDevice:
    """The base device, counting what the overlay reads from it and retrying failed storage reads.

    The policy is ``ember.build.retry``'s: only ``StorageError`` is retried (a backend that
    may answer next time); a header or mapping error would fail the same way again.
    Retries block the FUSE loop, which is what the guest waits on anyway. Once a read has
    failed for good, later reads are not retried: the guest is lost already, and failing
    fast lets its owner see it at once.
    """

    def __init__(
        self,
        base: BaseDevice,
        counters: TrafficCounters,
        retry_delays_s: tuple[float, ...] = READ_RETRY_DELAYS_S,
    ) -> None:
        self._base = base
        self._counters = counters
        self._retry_delays_s = retry_delays_s

    @property
    def size(self) -> int:
        return self._base.size

    def readinto(self, buffer: bytearray | memoryview, offset: int) -> int:
        def retrying(exc: StorageError, delay_s: float) -> None:
            _log.warning("memory read at %d failed, retrying in %.0f ms: %s", offset, delay_s * 1e3, exc)
            with self._counters.lock:
                self._counters.base_read_retries += 1

        count = read_with_retries(
            lambda: self._base.readinto(buffer, offset),
            delays_s=self._retry_delays_s if self._counters.failure is None else (),
            on_retry=retrying,
        )
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
        self,
        overlay: Overlay,
        file_name: str,
        counters: TrafficCounters,
        recorder: AccessRecorder,
        ready: threading.Event,
    ) -> None:
        self._overlay = overlay
        self._file = _ROOT + file_name
        self._name = file_name
        self._counters = counters
        self._recorder = recorder
        self._ready = ready
        self._time_ns = time.time_ns()
        self.prefetch_threads: set[int] = set()
        """Kernel thread ids whose reads are prefetches (set add/lookup is atomic under the GIL)."""
        self.requester: Callable[[], int] = lambda: 0
        """The thread id of the process behind the current request (mfusepy's context once mounted)."""

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

    def read(self, path: str | None, buffer: memoryview, offset: int, fh: int) -> int:
        """Fill ``buffer`` (libfuse's reply buffer, see ``direct_fuse``); the bytes filled."""
        if offset >= self._overlay.size:
            return 0
        length = min(len(buffer), self._overlay.size - offset)
        try:
            filled = self._overlay.readinto(buffer[:length], offset)
        except EmberError as exc:
            if self._counters.fail(f"reading {length} bytes at offset {offset} failed: {exc}"):
                # INFO: the sandbox's owner reports this first failure as the sandbox's error.
                _log.info("memory file read of %d bytes at %d failed: %s", length, offset, exc)
            raise OSError(errno.EIO, str(exc)) from exc
        with self._counters.lock:
            self._counters.reads += 1
            self._counters.read_bytes += filled
        prefetch = self.requester() in self.prefetch_threads
        self._recorder.record(offset, filled, AccessKind.PREFETCH if prefetch else AccessKind.READ)
        return filled

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if offset + len(data) > self._overlay.size:
            raise OSError(errno.EFBIG, "the memory file has a fixed size")
        try:
            self._overlay.write_at(data, offset)
        except EmberError as exc:
            if self._counters.fail(f"writing {len(data)} bytes at offset {offset} failed: {exc}"):
                _log.info("memory file write of %d bytes at %d failed: %s", len(data), offset, exc)
            raise OSError(_errno_of(exc), str(exc)) from exc
        with self._counters.lock:
            self._counters.writes += 1
            self._counters.written_bytes += len(data)
        self._recorder.record(offset, len(data), AccessKind.WRITE)
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


def _errno_of(exc: BaseException) -> int:
    """ENOSPC when the overlay's disk is full (the cause of the ember error), else EIO."""
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
        return cause.errno
    return errno.EIO


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

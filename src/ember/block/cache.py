"""The sparse file holding a copy-on-write device's written blocks (facts file 1.6, 3.5).

The file has the device's logical size and mirrors it offset for offset::

    device   |blk 0|blk 1|blk 2|blk 3|blk 4| ...            logical size = device size
    cache    |.....|#####|.....|#####|#####| ...            #: data written by the guest
              hole                                          .: hole (no disk blocks)

Only written blocks take disk space; a block the guest zeroes or trims is punched back to a
hole (``fallocate(PUNCH_HOLE | KEEP_SIZE)``), so an idle sandbox's cache shrinks when the
guest frees space. The file is private to one device: it is created with a unique name in
the directory the caller chooses and removed on ``close``.

I/O goes through ``pwrite`` / ``preadv`` on one descriptor, which are safe to call from
several threads at once; serializing writes to the same block is the overlay's job.
"""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

from ember.errors import StorageError, UsageError
from ember.header import ROOTFS_BLOCK_SIZE

FALLOC_FL_KEEP_SIZE: Final = 1
FALLOC_FL_PUNCH_HOLE: Final = 2
_ZERO_CHUNK: Final = bytes(1 << 20)
_UNSUPPORTED: Final = frozenset({errno.EOPNOTSUPP, errno.ENOSYS})

Buffer = bytes | bytearray | memoryview


def _load_fallocate() -> Callable[[int, int, int, int], int] | None:
    """glibc's 64-bit-offset ``fallocate``, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    function = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_fallocate: Final = _load_fallocate()


class CowCache:
    """A sparse file of ``size_bytes`` made of ``block_size`` blocks; use ``CowCache.create``."""

    def __init__(self, path: Path, fd: int, size_bytes: int, block_size: int) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self.block_size = block_size
        self._fd = fd
        self._closed = False
        self._punch_supported = _fallocate is not None

    @classmethod
    def create(
        cls, directory: Path, name_prefix: str, size_bytes: int, block_size: int = ROOTFS_BLOCK_SIZE
    ) -> CowCache:
        """A new empty cache ``{directory}/{name_prefix}-{random}.cow`` (never an existing file)."""
        if block_size <= 0 or size_bytes < 0 or size_bytes % block_size:
            raise UsageError(
                f"a cache of {size_bytes} bytes cannot be split into {block_size}-byte blocks: "
                "the device size must be a non-negative multiple of a positive block size"
            )
        try:
            fd, name = tempfile.mkstemp(prefix=f"{name_prefix}-", suffix=".cow", dir=directory)
        except OSError as exc:
            raise StorageError(
                f"cannot create a cache file in {directory}: {exc}; check that it exists and is writable"
            ) from exc
        path = Path(name)
        try:
            os.ftruncate(fd, size_bytes)
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise StorageError(
                f"cannot size cache file {path} to {size_bytes} bytes: {exc}; check free space and quotas"
            ) from exc
        return cls(path, fd, size_bytes, block_size)

    @property
    def block_count(self) -> int:
        return self.size_bytes // self.block_size

    def fileno(self) -> int:
        """The open descriptor, for ``copy_file_range`` at export; valid until ``close``."""
        self._check_open()
        return self._fd

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"cache file {self.path} is closed: the device was already released")

    def _failed(self, action: str, offset: int, length: int, exc: OSError) -> StorageError:
        return StorageError(
            f"cannot {action} bytes [{offset}, {offset + length}) of cache file {self.path}: {exc}; "
            "check the disk holding the sandbox cache (free space, I/O errors)"
        )

    def write(self, data: Buffer, offset: int) -> None:
        """Store all of ``data`` at ``offset``."""
        self._check_open()
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(self._fd, view[done:], offset + done)
        except OSError as exc:
            raise self._failed("write", offset, len(view), exc) from exc

    def readinto(self, buffer: bytearray | memoryview, offset: int) -> int:
        """Fill ``buffer`` from ``offset``; short only at the end of the file. Holes read as zeros."""
        self._check_open()
        view = memoryview(buffer).cast("B")
        done = 0
        try:
            while done < len(view):
                count = os.preadv(self._fd, [view[done:]], offset + done)
                if count == 0:
                    break
                done += count
        except OSError as exc:
            raise self._failed("read", offset, len(view), exc) from exc
        return done

    def punch(self, offset: int, length: int) -> None:
        """Make ``[offset, offset + length)`` read as zeros, freeing its disk blocks where the
        file system can punch holes (ext4, XFS, btrfs, tmpfs); elsewhere by writing zeros."""
        self._check_open()
        if length <= 0:
            return
        if self._punch_supported and _fallocate is not None:
            mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
            if _fallocate(self._fd, mode, offset, length) == 0:
                return
            code = ctypes.get_errno()
            if code not in _UNSUPPORTED:
                raise self._failed("punch", offset, length, OSError(code, os.strerror(code)))
            self._punch_supported = False
        position = offset
        while position < offset + length:
            take = min(len(_ZERO_CHUNK), offset + length - position)
            self.write(memoryview(_ZERO_CHUNK)[:take], position)
            position += take

    def sync(self) -> None:
        """Push written data to the disk (NBD FLUSH semantics)."""
        self._check_open()
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise self._failed("sync", 0, self.size_bytes, exc) from exc

    def close(self) -> None:
        """Close and delete the file; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            os.close(self._fd)
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot remove cache file {self.path}: {exc}; delete it by hand to reclaim its space"
            ) from exc

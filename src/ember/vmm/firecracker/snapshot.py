"""Folding a Firecracker Diff memory file onto the memory file it is relative to.

A Diff snapshot's memory file has the guest's full RAM size but holds data only at the pages
dirtied since the previous snapshot; everything else is a hole::

    offset 0                                                           RAM size
    diff:  [ hole ...... ][page][ hole ............ ][page][page][ hole ... ]
    base:  [ RAM as of the previous snapshot ............................... ]
    after: base with the diff's data extents written over it at the same offsets

The data extents are found with ``SEEK_DATA``/``SEEK_HOLE``, so the cost is proportional to the
dirty pages, not to the RAM size. On a filesystem without hole reporting the whole diff reads
as data and the merge becomes a plain (correct, slower) full copy.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ember.errors import VmError

_COPY_CHUNK_BYTES = 1 << 20


def data_extents(path: Path) -> list[tuple[int, int]]:
    """``(offset, length)`` of each data region of ``path``, in ascending order."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise VmError(f"cannot open memory diff {path}: {exc}") from exc
    try:
        return _extents(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def merge_memory_diff(diff_path: Path, base_path: Path) -> int:
    """Write every data extent of ``diff_path`` into ``base_path`` at the same offset; bytes copied.

    Both files must have the same size (the guest's RAM). ``base_path`` is modified in place:
    copy it first if it is still needed as it was.
    """
    diff_size = _size(diff_path)
    base_size = _size(base_path)
    if diff_size != base_size:
        raise VmError(
            f"memory diff {diff_path} is {diff_size} bytes but base {base_path} is {base_size}: "
            "a diff can only be merged onto the memory file of the VM it was taken from"
        )
    copied = 0
    try:
        with open(diff_path, "rb") as diff, open(base_path, "r+b") as base:
            for offset, length in _extents(diff.fileno(), diff_size):
                end = offset + length
                while offset < end:
                    chunk = os.pread(diff.fileno(), min(_COPY_CHUNK_BYTES, end - offset), offset)
                    if not chunk:
                        raise VmError(f"memory diff {diff_path} ended early at offset {offset}")
                    os.pwrite(base.fileno(), chunk, offset)
                    offset += len(chunk)
                    copied += len(chunk)
    except OSError as exc:
        raise VmError(f"cannot merge {diff_path} onto {base_path}: {exc}") from exc
    return copied


def _extents(fd: int, size: int) -> list[tuple[int, int]]:
    extents: list[tuple[int, int]] = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data at or after offset
                break
            raise VmError(f"cannot find the data extents of a memory diff: {exc}") from exc
        extents.append((start, end - start))
        offset = end
    return extents


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise VmError(f"cannot read memory file {path}: {exc}") from exc

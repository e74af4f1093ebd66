"""A cold-booted guest's RAM file as a memfile diff build (facts file 3.2, 3.3, 3.6).

A template's first layer has no memory parent: its base is an empty device (every page
nil). Every block of guest RAM that holds a non-zero byte is dirty and stored; every
all-zero block is empty and never stored, which is what the original derives from
Firecracker's resident/empty page report for cold-booted sandboxes::

    RAM file   | data | zero | hole ... | data |      holes (never touched) are empty without a read
    memfile    | data | data |                        dirty blocks packed in ascending order
    header     [0,B) -> new @0  [B,2B) -> nil  ...  [kB,(k+1)B) -> new @B

The scan walks only the file's data extents (SEEK_DATA / SEEK_HOLE) and tests blocks for
zero with numpy, so a mostly idle 1 GiB guest is exported in a fraction of a second.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from ember.block import pack_blocks
from ember.errors import StorageError, UsageError
from ember.header import DiffMetadata, Header, empty_device_header

SCAN_CHUNK_BYTES: Final = 64 << 20


def _data_extents(fd: int, size_bytes: int) -> list[tuple[int, int]]:
    extents = []
    offset = 0
    while offset < size_bytes:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:
            break  # ENXIO: no data past offset
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size_bytes)
        extents.append((start, end))
        offset = end
    return extents


def nonzero_blocks(fd: int, size_bytes: int, block_size: int) -> npt.NDArray[np.uint64]:
    """Sorted indices of the blocks of the file that hold at least one non-zero byte."""
    if block_size <= 0 or block_size % 8 or SCAN_CHUNK_BYTES % block_size:
        raise UsageError(f"block size {block_size} must be a positive multiple of 8 dividing 64 MiB")
    found: list[npt.NDArray[np.uint64]] = []
    raw = bytearray(SCAN_CHUNK_BYTES)
    buffer = np.frombuffer(raw, dtype=np.uint64)
    for start, end in _data_extents(fd, size_bytes):
        first = start // block_size * block_size
        for offset in range(first, end, SCAN_CHUNK_BYTES):
            length = min(SCAN_CHUNK_BYTES, end - offset)
            blocks = -(-length // block_size)
            view = memoryview(raw)[: blocks * block_size]
            count = os.preadv(fd, [view], offset)
            view[count:] = bytes(len(view) - count)
            words = buffer[: blocks * block_size // 8].reshape(blocks, block_size // 8)
            hits = np.flatnonzero(words.any(axis=1)).astype(np.uint64)
            found.append(hits + np.uint64(offset // block_size))
    if not found:
        return np.empty(0, dtype=np.uint64)
    return np.unique(np.concatenate(found))


def export_memory(
    ram_path: Path, size_bytes: int, block_size: int, new_build_id: uuid.UUID, out_path: Path
) -> Header:
    """Pack the non-zero blocks of ``ram_path`` into ``out_path``; the header of generation 1 over nil."""
    if size_bytes % block_size:
        raise UsageError(
            f"guest memory of {size_bytes} bytes is not a whole number of {block_size}-byte pages"
        )
    try:
        fd = os.open(ram_path, os.O_RDONLY)
    except OSError as exc:
        raise StorageError(f"cannot open guest memory file {ram_path}: {exc}") from exc
    try:
        dirty = nonzero_blocks(fd, size_bytes, block_size)
        pack_blocks(fd, ram_path, dirty, block_size, out_path)
    finally:
        os.close(fd)
    every = np.arange(size_bytes // block_size, dtype=np.uint64)
    empty = np.setdiff1d(every, dirty, assume_unique=True)
    parent = empty_device_header(new_build_id, size_bytes, block_size)
    return DiffMetadata(dirty, empty, block_size).to_diff_header(parent, new_build_id)

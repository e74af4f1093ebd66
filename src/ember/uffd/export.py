"""A paused Firecracker guest's memory as a diff build of the memfile it was restored from.

Upstream Firecracker 1.12 has no ``/memory/dirty`` (E2B's fork does), so the dirty set comes
from a ``Diff`` snapshot taken with ``enable_diff_snapshots`` on the load: its memory file
holds exactly the pages the guest wrote since the restore, everything else is a hole::

    diff memory file  [ hole ... ][data][ hole ...... ][zeros][ hole ... ][data]
    page set          .            dirty  .             empty   .          dirty
    page tracker      ZERO / REMOVED pages the guest did not write again -> empty too
    memfile diff      [data][data]                      dirty pages packed in ascending order
    header            parent's header + (dirty -> new build, empty -> nil), generation + 1

Dirty wins: a page in the Diff file is never empty unless the guest wrote zeros to it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ember.block import pack_blocks
from ember.errors import StorageError, UsageError
from ember.header import DiffMetadata, Header
from ember.memory import nonzero_blocks
from ember.uffd.tracker import PageTracker


def export_memory_diff_snapshot(
    diff_memory_path: Path,
    parent_header: Header,
    new_build_id: uuid.UUID,
    out_path: Path,
    tracker: PageTracker | None = None,
) -> Header:
    """Pack the Diff file's non-zero pages into ``out_path``; the memfile header of ``new_build_id``.

    ``parent_header`` is the memfile header of the build the VM was restored from and
    ``tracker`` the page server's tracker of that VM (in pages of the header's block size).
    The header returned is still marked pending upload, like every fresh diff header.
    """
    block_size = parent_header.metadata.block_size
    size_bytes = parent_header.metadata.size
    if tracker is not None and tracker.page_count != size_bytes // block_size:
        raise UsageError(
            f"the page tracker has {tracker.page_count} pages but the parent memfile has "
            f"{size_bytes // block_size} blocks of {block_size} bytes: export with the tracker of the "
            "page server that served this parent, with pages of the header's block size"
        )
    try:
        fd = os.open(diff_memory_path, os.O_RDONLY)
    except OSError as exc:
        raise StorageError(f"cannot open the Diff snapshot memory file {diff_memory_path}: {exc}") from exc
    try:
        diff_size = os.fstat(fd).st_size
        if diff_size != size_bytes:
            raise UsageError(
                f"{diff_memory_path} is {diff_size} bytes but the parent memfile is {size_bytes}: "
                "take the Diff snapshot from the VM restored from that memfile"
            )
        dirty = nonzero_blocks(fd, size_bytes, block_size)
        written = _data_blocks(fd, size_bytes, block_size)
        pack_blocks(fd, diff_memory_path, dirty, block_size, out_path)
    finally:
        os.close(fd)
    empty = np.setdiff1d(written, dirty, assume_unique=True)
    if tracker is not None:
        empty = np.union1d(empty, np.setdiff1d(tracker.export()[1], written, assume_unique=True))
    return DiffMetadata(dirty, empty.astype(np.uint64), block_size).to_diff_header(
        parent_header, new_build_id
    )


def _data_blocks(fd: int, size_bytes: int, block_size: int) -> npt.NDArray[np.uint64]:
    """Every block that a data extent of the file touches (SEEK_DATA / SEEK_HOLE)."""
    runs: list[npt.NDArray[np.uint64]] = []
    offset = 0
    while offset < size_bytes:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: no data past offset
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size_bytes)
        runs.append(np.arange(start // block_size, -(-end // block_size), dtype=np.uint64))
        offset = end
    return np.unique(np.concatenate(runs)) if runs else np.empty(0, dtype=np.uint64)

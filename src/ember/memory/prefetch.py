"""Memory prefetch data: the pages a resume touches, merged across runs, as extents (facts 1.4, 4.6).

Recording: every FUSE request on the memory file marks the pages it covers. The first
request to cover a page fixes its place in the order (a counter) and its access type::

    order   int64[pages]   -1 = never accessed, else the page's first-access sequence number
    kind    uint8[pages]   b"r" read (the guest or the kernel's readahead for it),
                           b"w" written back before ever being read, b"p" loaded by the prefetcher

Both arrays exist only for the chunks of ``CHUNK_PAGES`` pages that some request touched
(9 bytes per page: 36 KiB per chunk), so memory follows what the guest used, not what the
header says the device holds (up to 16 TiB). A request is one numpy slice per chunk it
covers (one or two), so recording is always on.

Merging runs (``resume-build -optimize``): a page is kept only if every run touched it; its
order is the average of its positions in the runs, and an access type the runs disagree on
becomes "r". The result is ``metadata.json``'s ``prefetch.memory`` (indices by average order).

Replaying: indices become byte extents (contiguous pages, at most ``max_extent_bytes`` each),
ordered by the earliest position of any of their pages, so what the guest needs first is
loaded first::

    indices (first-access order)   [7, 8, 2, 9, 3]
    extents (by earliest page)     [7, 10) from position 0, then [2, 4) from position 2
"""

from __future__ import annotations

import enum
import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from ember.build import MemoryPrefetch
from ember.errors import UsageError

DEFAULT_EXTENT_BYTES: Final = 1 << 20
"""One FUSE read at most (the kernel's 1 MiB ``max_pages``)."""


class AccessKind(enum.Enum):
    """How a page was first reached through the memory file (the metadata's access types)."""

    READ = "r"
    WRITE = "w"
    PREFETCH = "p"

    @property
    def code(self) -> int:
        return ord(self.value)


@dataclass(frozen=True, eq=False)
class PageAccesses:
    """One run's touched pages in first-access order; ``kinds`` holds ``AccessKind`` codes, aligned."""

    block_size: int
    indices: npt.NDArray[np.int64]
    kinds: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return len(self.indices)


CHUNK_PAGES: Final = 1 << 12
"""Pages per recording chunk: 16 MiB of device at 4 KiB pages, 8 GiB at 2 MiB hugepages."""
_CHUNK_SHIFT: Final = CHUNK_PAGES.bit_length() - 1


class AccessRecorder:
    """First access of every page of a device; thread-safe (one lock, held for one request's update)."""

    def __init__(self, size_bytes: int, block_size: int) -> None:
        if block_size <= 0:
            raise UsageError(f"block size {block_size} must be positive")
        self.block_size = block_size
        self._pages = -(-size_bytes // block_size)
        self._chunks: dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]] = {}
        self._next = 0
        self._reread = 0
        self._lock = threading.Lock()

    def _chunk(self, index: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
        chunk = self._chunks.get(index)
        if chunk is None:
            chunk = self._chunks[index] = (
                np.full(CHUNK_PAGES, -1, dtype=np.int64),
                np.zeros(CHUNK_PAGES, dtype=np.uint8),
            )
        return chunk

    def record(self, offset: int, length: int, kind: AccessKind) -> None:
        """Mark the pages of ``[offset, offset + length)``; pages seen before keep their first access.

        A read of a page already read once counts as a re-read: with the mount's page cache
        kept, that happens only when the kernel dropped the page again.
        """
        if length <= 0 or offset < 0:
            return
        first = offset // self.block_size
        end = min(-(-(offset + length) // self.block_size), self._pages)
        if first >= end:
            return
        with self._lock:
            for index in range(first >> _CHUNK_SHIFT, ((end - 1) >> _CHUNK_SHIFT) + 1):
                base = index << _CHUNK_SHIFT
                order, kinds = self._chunk(index)
                low, high = max(first - base, 0), min(end - base, CHUNK_PAGES)
                window = order[low:high]
                if kind is not AccessKind.WRITE:
                    read_before = (window >= 0) & (kinds[low:high] != AccessKind.WRITE.code)
                    self._reread += int(np.count_nonzero(read_before))
                fresh = np.flatnonzero(window < 0)
                window[fresh] = np.arange(self._next, self._next + len(fresh), dtype=np.int64)
                kinds[low + fresh] = kind.code
                self._next += len(fresh)

    @property
    def pages_reread(self) -> int:
        """Page reads of pages that had already been read (by anyone) through the file."""
        with self._lock:
            return self._reread

    def count(self, kind: AccessKind) -> int:
        """Pages first reached with ``kind``."""
        with self._lock:
            return sum(int(np.count_nonzero(kinds == kind.code)) for _, kinds in self._chunks.values())

    def snapshot(self) -> PageAccesses:
        """The pages touched so far, in first-access order."""
        with self._lock:
            pages: list[npt.NDArray[np.int64]] = [np.zeros(0, dtype=np.int64)]
            orders: list[npt.NDArray[np.int64]] = [np.zeros(0, dtype=np.int64)]
            kinds: list[npt.NDArray[np.uint8]] = [np.zeros(0, dtype=np.uint8)]
            for index, (order, kind) in sorted(self._chunks.items()):
                touched = np.flatnonzero(order >= 0)
                pages.append(touched.astype(np.int64) + (index << _CHUNK_SHIFT))
                orders.append(order[touched])
                kinds.append(kind[touched])
        ranked = np.argsort(np.concatenate(orders), kind="stable")
        return PageAccesses(
            self.block_size, np.concatenate(pages)[ranked], np.concatenate(kinds)[ranked].copy()
        )


def merge_runs(runs: Sequence[PageAccesses]) -> MemoryPrefetch:
    """Pages every run touched, by average first-access position; types the runs disagree on become "r"."""
    if not runs:
        raise UsageError("merging prefetch runs needs at least one run")
    block_size = runs[0].block_size
    if any(run.block_size != block_size for run in runs):
        raise UsageError(
            f"prefetch runs disagree on the page size ({sorted({run.block_size for run in runs})}): "
            "record every run on the same build"
        )
    common = functools.reduce(np.intersect1d, [run.indices for run in runs])
    positions = np.empty((len(runs), len(common)), dtype=np.float64)
    kinds = np.empty((len(runs), len(common)), dtype=np.uint8)
    for row, run in enumerate(runs):
        sorter = np.argsort(run.indices, kind="stable")
        position = sorter[np.searchsorted(run.indices, common, sorter=sorter)]
        positions[row] = position
        kinds[row] = run.kinds[position]
    agreed = np.where((kinds == kinds[0]).all(axis=0), kinds[0], AccessKind.READ.code)
    ranked = np.lexsort((common, positions.mean(axis=0)))
    return MemoryPrefetch(
        indices=tuple(int(index) for index in common[ranked]),
        access_types=tuple(chr(code) for code in agreed[ranked]),
        block_size=block_size,
    )


@dataclass(frozen=True)
class Extent:
    """``length_bytes`` of the device from ``offset``: one read of the prefetcher."""

    offset: int
    length_bytes: int


def coalesce(
    indices: Sequence[int], block_size: int, max_extent_bytes: int = DEFAULT_EXTENT_BYTES
) -> list[Extent]:
    """Contiguous pages as extents of at most ``max_extent_bytes``, by the earliest position of their pages.

    Duplicate indices are loaded once. ``max_extent_bytes`` is rounded down to whole pages
    (at least one).
    """
    if block_size <= 0:
        raise UsageError(f"prefetch block size {block_size} must be positive")
    if not len(indices):
        return []
    pages = np.asarray(indices, dtype=np.int64)
    if int(pages.min()) < 0:
        raise UsageError("prefetch indices must not be negative")
    max_pages = max(1, max_extent_bytes // block_size)
    by_index = np.argsort(pages, kind="stable")
    unique, starts = np.unique(pages[by_index], return_index=True)
    earliest = np.minimum.reduceat(by_index, starts)
    run_start = np.concatenate(([True], np.diff(unique) != 1))
    run_id = np.cumsum(run_start) - 1
    first_of_run = np.flatnonzero(run_start)[run_id]
    boundary = (np.arange(len(unique)) - first_of_run) % max_pages == 0
    group_starts = np.flatnonzero(boundary)
    group_ends = np.append(group_starts[1:], len(unique))
    priority = np.argsort(np.minimum.reduceat(earliest, group_starts), kind="stable")
    return [
        Extent(int(unique[start]) * block_size, int(end - start) * block_size)
        for start, end in zip(group_starts[priority].tolist(), group_ends[priority].tolist(), strict=True)
    ]

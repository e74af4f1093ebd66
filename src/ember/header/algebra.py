"""Mapping algebra: build a layer's mappings from a bitmap, lay a diff over a base, join, validate.

Everything is vectorized with numpy so headers with millions of mappings merge in well under a
second. ``merge_mappings`` reproduces the upstream sequential 8-case merge exactly, including its
treatment of zero-length items; the reasoning is spelled out in ``_merge_tail_pointers``.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import numpy.typing as npt

from ember.errors import MappingError
from ember.header.model import NIL_UUID, Mapping
from ember.header.table import U32, U64, MappingTable
from ember.header.visualize import format_mapping

_U64_MAX = np.uint64((1 << 64) - 1)
_Column = npt.NDArray[Any]
_Rows = tuple[_Column, _Column, _Column, _Column]
"""Row set as columns: offsets, lengths, storage offsets, build index."""


def _shift_right(column: U64) -> U64:
    """``column`` moved one slot later with a zero in front (the previous row's value per row)."""
    return np.concatenate((np.zeros(min(len(column), 1), dtype=np.uint64), column[:-1]))


def _runs(build_id: uuid.UUID, indices: npt.ArrayLike, block_size: int) -> tuple[U64, U64]:
    if block_size <= 0:
        raise MappingError(f"block size must be positive, got {block_size}")
    try:
        blocks = np.asarray(indices, dtype=np.uint64)
    except (OverflowError, ValueError, TypeError) as exc:
        raise MappingError(f"block indices for build {build_id} must be unsigned integers: {exc}") from exc
    if blocks.ndim != 1:
        raise MappingError("block indices must be a one-dimensional array")
    if len(blocks) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    if np.any(blocks[1:] <= blocks[:-1]):
        raise MappingError(f"block indices for build {build_id} must be sorted and unique")
    breaks = np.flatnonzero(blocks[1:] != blocks[:-1] + np.uint64(1)) + 1
    run_starts = np.concatenate(([0], breaks))
    run_ends = np.concatenate((breaks, [len(blocks)]))
    size = np.uint64(block_size)
    return blocks[run_starts] * size, (run_ends - run_starts).astype(np.uint64) * size


def mapping_from_bitmap(build_id: uuid.UUID, indices: npt.ArrayLike, block_size: int) -> MappingTable:
    """One mapping per run of consecutive block indices, storage packed in run order.

    The storage offset of a run is the total length of the runs before it, which is how a diff
    data object is written: dirty blocks back to back in ascending order.
    """
    offsets, lengths = _runs(build_id, indices, block_size)
    storage = _shift_right(np.cumsum(lengths, dtype=np.uint64))
    return MappingTable(offsets, lengths, storage, np.zeros(len(offsets), np.uint32), (build_id,))


def identity_mapping_from_bitmap(
    build_id: uuid.UUID, indices: npt.ArrayLike, block_size: int
) -> MappingTable:
    """Like ``mapping_from_bitmap`` but storage offset == device offset (provisional, local-only layers)."""
    offsets, lengths = _runs(build_id, indices, block_size)
    return MappingTable(offsets, lengths, offsets, np.zeros(len(offsets), np.uint32), (build_id,))


def _shared_builds(base: MappingTable, diff: MappingTable) -> tuple[tuple[uuid.UUID, ...], U32]:
    """One build tuple for both tables; returns it and ``diff``'s index column translated into it."""
    builds = list(base.builds)
    position = {build: i for i, build in enumerate(builds)}
    translate = []
    for build in diff.builds:
        if build not in position:
            position[build] = len(builds)
            builds.append(build)
        translate.append(position[build])
    diff_index = np.array(translate, dtype=np.uint32)[diff.build_index] if len(diff) else diff.build_index
    return tuple(builds), diff_index


def _subtract(starts: U64, ends: U64, storage: U64, index: U32, cut_starts: U64, cut_ends: U64) -> _Rows:
    """Pieces of sorted disjoint intervals not covered by sorted disjoint cuts (storage shifted along)."""
    gap_first = np.searchsorted(cut_starts, starts, side="right")
    gap_last = np.searchsorted(cut_ends, ends, side="left")
    counts = np.maximum(gap_last - gap_first + 1, 0)
    owner = np.repeat(np.arange(len(starts)), counts)
    first_slot = np.repeat(np.cumsum(counts) - counts, counts)
    gap = np.arange(len(owner)) - first_slot + np.repeat(gap_first, counts)
    cuts = len(cut_starts)
    lower = np.where(gap == 0, np.uint64(0), cut_ends[np.maximum(gap - 1, 0)] if cuts else np.uint64(0))
    upper = np.where(gap == cuts, _U64_MAX, cut_starts[np.minimum(gap, cuts - 1)] if cuts else _U64_MAX)
    piece_starts = np.maximum(starts[owner], lower)
    piece_ends = np.minimum(ends[owner], upper)
    keep = piece_ends > piece_starts
    owner, piece_starts, piece_ends = owner[keep], piece_starts[keep], piece_ends[keep]
    return (
        piece_starts,
        piece_ends - piece_starts,
        storage[owner] + (piece_starts - starts[owner]),
        index[owner],
    )


def _merge_tail_pointers(
    base: MappingTable, diff: MappingTable, base_nz: npt.NDArray[np.intp], diff_nz: npt.NDArray[np.intp]
) -> tuple[int, int, int, int]:
    """Where the upstream loop stops: ``(base_stop, diff_stop, bases_in_loop, diffs_in_loop)``.

    The sequential loop skips zero-length items only while both lists still have items, so the
    zero-length items that survive are exactly those at or after the indices the loop stops at.
    Non-zero items behave as if zero-length ones did not exist. Diff ``j`` is emitted inside the
    loop by the first non-zero base ending at or after it, except that a base ending exactly with
    the diff and starting (after trimming by diff ``j-1``) at or after the diff is dropped first, so
    the next base emits it. The loop ends when the last non-zero diff is emitted (base pointer on
    the emitting base, or past it if the diff consumed it) or, if that never happens, when the last
    non-zero base is consumed. ``bases_in_loop``/``diffs_in_loop`` count the non-zero items whose
    pieces were emitted inside the loop (-1 bases means "up to the emitting base, clipped").
    """
    nb, nd = len(base_nz), len(diff_nz)
    base_total, diff_total = len(base), len(diff)
    if nb == 0 or nd == 0:
        base_stop, diff_stop, bases_in_loop, diffs_in_loop = 0, 0, 0, 0
    else:
        b_starts, b_ends = base.offsets[base_nz], base.ends[base_nz]
        d_starts, d_ends = diff.offsets[diff_nz], diff.ends[diff_nz]
        first = np.searchsorted(b_ends, d_ends, side="left")
        clipped = np.minimum(first, nb - 1)
        previous_end = _shift_right(d_ends)
        trimmed_start = np.maximum(b_starts[clipped], previous_end)
        dropped = (first < nb) & (b_ends[clipped] == d_ends) & (trimmed_start >= d_starts)
        emitter = first + dropped
        if emitter[-1] < nb:
            k = int(emitter[-1])
            consumed = bool(b_ends[k] == d_ends[-1])
            base_stop = int(base_nz[k]) + int(consumed)
            diff_stop = int(diff_nz[-1]) + 1
            bases_in_loop, diffs_in_loop = -(k + 1), nd
        else:
            pending = int(np.argmax(emitter >= nb))
            base_stop = int(base_nz[-1]) + 1
            diff_stop = int(diff_nz[pending])
            if pending > 0 and emitter[pending - 1] == nb - 1 and b_ends[-1] == d_ends[pending - 1]:
                diff_stop = int(diff_nz[pending - 1]) + 1
            bases_in_loop, diffs_in_loop = nb, pending
    if base_stop < base_total and diff_stop < diff_total:
        later = base_nz[base_nz >= base_stop]
        if len(later):
            base_stop, diff_stop = int(later[0]), diff_total
        else:
            base_stop = base_total
    return base_stop, diff_stop, bases_in_loop, diffs_in_loop


def merge_mappings(base: MappingTable, diff: MappingTable) -> MappingTable:
    """Lay ``diff`` over ``base``: diff ranges win, base ranges are split around them.

    Inputs must each be sorted by offset and non-overlapping (zero-length items and gaps allowed).
    The result is what upstream ``MergeMappings`` returns: items in offset order, base items past
    the last diff and diff items past the base end appended verbatim, adjacent same-build items
    not joined (see ``normalize_mappings``). An empty diff returns ``base`` itself.
    """
    if len(diff) == 0:
        return base
    builds, diff_index = _shared_builds(base, diff)
    base_nz = np.flatnonzero(base.lengths)
    diff_nz = np.flatnonzero(diff.lengths)
    base_stop, diff_stop, bases_in_loop, diffs_in_loop = _merge_tail_pointers(base, diff, base_nz, diff_nz)

    d_starts, d_ends = diff.offsets[diff_nz], diff.ends[diff_nz]
    loop_bases = base_nz[: abs(bases_in_loop)]
    pieces = _subtract(
        base.offsets[loop_bases],
        base.ends[loop_bases],
        base.storage_offsets[loop_bases],
        base.build_index[loop_bases],
        d_starts,
        d_ends,
    )
    remainder: _Rows | None = None
    if bases_in_loop < 0:
        before = pieces[0] < d_ends[-1]
        if base_nz[-bases_in_loop - 1] == base_stop:
            remainder = _take(pieces, ~before)
            base_stop += 1
        pieces = _take(pieces, before)
    loop_diffs = diff_nz[:diffs_in_loop]
    diff_rows = (diff.offsets, diff.lengths, diff.storage_offsets, diff_index)
    parts = [_interleave(pieces, _take(diff_rows, loop_diffs))]
    if remainder is not None:
        parts.append(remainder)
    base_rows = (base.offsets, base.lengths, base.storage_offsets, base.build_index)
    parts.append(_take(base_rows, slice(base_stop, None)))
    parts.append(_take(diff_rows, slice(diff_stop, None)))
    return MappingTable(
        np.concatenate([part[0] for part in parts]),
        np.concatenate([part[1] for part in parts]),
        np.concatenate([part[2] for part in parts]),
        np.concatenate([part[3] for part in parts]),
        builds,
    )


def _take(rows: _Rows, selector: npt.NDArray[np.intp] | npt.NDArray[np.bool_] | slice) -> _Rows:
    return rows[0][selector], rows[1][selector], rows[2][selector], rows[3][selector]


def _interleave(first: _Rows, second: _Rows) -> _Rows:
    """Merge two offset-sorted row sets whose offsets never coincide into one sorted set."""
    first_slots = np.arange(len(first[0])) + np.searchsorted(second[0], first[0])
    second_slots = np.arange(len(second[0])) + np.searchsorted(first[0], second[0])
    total = len(first_slots) + len(second_slots)
    merged = []
    for a, b in zip(first, second, strict=True):
        column = np.empty(total, dtype=a.dtype)
        column[first_slots] = a
        column[second_slots] = b
        merged.append(column)
    return merged[0], merged[1], merged[2], merged[3]


def normalize_mappings(table: MappingTable) -> MappingTable:
    """Join each item into the previous one when both name the same build and, unless that build
    is NIL_UUID (zeros have no storage), the storage continues exactly where the previous ended.
    Returns a new table; the input is untouched."""
    if len(table) == 0:
        return MappingTable.empty()
    index = table.build_index
    nil = table.index_of(NIL_UUID)
    same = index[1:] == index[:-1]
    contiguous = table.storage_offsets[1:] == table.storage_offsets[:-1] + table.lengths[:-1]
    empty = index[1:] == nil if nil is not None else np.zeros(len(table) - 1, dtype=bool)
    joins = same & (empty | contiguous)
    heads = np.flatnonzero(np.concatenate(([True], ~joins)))
    return MappingTable(
        table.offsets[heads],
        np.add.reduceat(table.lengths, heads),
        table.storage_offsets[heads],
        index[heads],
        table.builds,
    )


def validate_mappings(table: MappingTable, size: int, block_size: int) -> None:
    """Raise MappingError unless the items tile ``[0, size)`` from 0 with block-multiple lengths."""
    if block_size <= 0:
        raise MappingError(f"block size must be positive to validate mappings, got {block_size}")
    if len(table) == 0:
        if size != 0:
            raise MappingError(f"mapping validation failed: no mappings cover the {size}-byte device")
        return
    ends = np.cumsum(table.lengths, dtype=np.uint64)
    expected = _shift_right(ends)
    wrapped = ends < expected
    bad_offset = np.flatnonzero(table.offsets != expected)
    bad_length = np.flatnonzero(table.lengths % np.uint64(block_size))
    too_far = np.flatnonzero((ends > np.uint64(size)) | wrapped)
    candidates = [int(found[0]) for found in (bad_offset, bad_length, too_far) if len(found)]
    if candidates:
        i = min(candidates)
        mapping, current = table[i], int(expected[i])
        if len(bad_offset) and bad_offset[0] == i:
            problem = (
                f"does not start at the correct offset: expected {current} (block {current // block_size}), "
                f"got {mapping.offset} (block {mapping.offset // block_size})"
            )
        elif len(bad_length) and bad_length[0] == i:
            problem = (
                f"has an invalid length: {mapping.length}. "
                f"It should be a multiple of block size: {block_size}"
            )
        else:
            problem = (
                f"goes beyond the size: {current} (current offset) + "
                f"{mapping.length} (length) > {size} (size)"
            )
        raise MappingError(_validation_message(mapping, block_size, problem))
    total = int(ends[-1])
    if total != size:
        problem = f"does not cover the whole size: {total} (current offset) != {size} (size)"
        raise MappingError(_validation_message(table[len(table) - 1], block_size, problem))


def _validation_message(mapping: Mapping, block_size: int, problem: str) -> str:
    line = format_mapping(mapping, block_size)
    return f"mapping validation failed: the following mapping\n- {line}\n{problem}"

"""Merge, normalize, validate and bitmap mappings: upstream acceptance cases plus oracle checks."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from header_rows import rows, table
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ember.errors import MappingError
from ember.header import (
    NIL_UUID,
    Mapping,
    MappingTable,
    identity_mapping_from_bitmap,
    mapping_from_bitmap,
    merge_mappings,
    normalize_mappings,
    validate_mappings,
)

B = 2 * 1024 * 1024
N = NIL_UUID
BASE = uuid.UUID("11111111-1111-4111-8111-111111111111")
DIFF = uuid.UUID("22222222-2222-4222-8222-222222222222")
A, D, P, X, Y = (uuid.UUID(int=i) for i in (0xA, 0xD, 0xF, 0xE, 0xB))
SIMPLE_BASE = [(0, 2, N, 0), (2, 4, BASE, 0), (6, 2, N, 0)]


def oracle_merge(base: list[Mapping], diff: list[Mapping]) -> list[Mapping]:
    """Sequential transcription of the upstream 8-case merge (facts file 2.9)."""
    if not diff:
        return list(base)
    base = list(base)
    out: list[Mapping] = []
    b = d = 0
    while b < len(base) and d < len(diff):
        bm, dm = base[b], diff[d]
        if bm.length == 0:
            b += 1
        elif dm.length == 0:
            d += 1
        elif bm.end <= dm.offset:
            out.append(bm)
            b += 1
        elif dm.end <= bm.offset:
            out.append(dm)
            d += 1
        elif bm.offset >= dm.offset and bm.end <= dm.end:
            b += 1
        elif dm.offset >= bm.offset and dm.end <= bm.end:
            if dm.offset - bm.offset > 0:
                out.append(Mapping(bm.offset, dm.offset - bm.offset, bm.build_id, bm.storage_offset))
            out.append(dm)
            d += 1
            shift = dm.end - bm.offset
            if bm.length - shift > 0:
                base[b] = Mapping(
                    bm.offset + shift, bm.length - shift, bm.build_id, bm.storage_offset + shift
                )
            else:
                b += 1
        elif bm.offset > dm.offset:
            out.append(dm)
            d += 1
            shift = dm.end - bm.offset
            if bm.length - shift > 0:
                base[b] = Mapping(
                    bm.offset + shift, bm.length - shift, bm.build_id, bm.storage_offset + shift
                )
            else:
                b += 1
        elif dm.offset > bm.offset:
            out.append(Mapping(bm.offset, dm.offset - bm.offset, bm.build_id, bm.storage_offset))
            b += 1
        else:
            raise AssertionError("invalid case during merge mappings")
    return out + base[b:] + diff[d:]


def oracle_normalize(items: list[Mapping]) -> list[Mapping]:
    """Sequential transcription of upstream NormalizeMappings (facts file 2.10)."""
    if not items:
        return []
    out: list[Mapping] = []
    current = items[0]
    for item in items[1:]:
        joins = item.build_id == current.build_id and (
            item.build_id == NIL_UUID or item.storage_offset == current.storage_offset + current.length
        )
        if joins:
            current = Mapping(
                current.offset, current.length + item.length, current.build_id, current.storage_offset
            )
        else:
            out.append(current)
            current = item
    return [*out, current]


@pytest.mark.parametrize(
    ("diff", "expected"),
    [
        pytest.param([(0, 0, N, 0)], SIMPLE_BASE, id="RemoveEmpty"),
        pytest.param(
            [(7, 1, DIFF, 0)], [(0, 2, N), (2, 4, BASE), (6, 1, N), (7, 1, DIFF)], id="BaseBeforeDiff"
        ),
        pytest.param(
            [(0, 1, DIFF, 0)], [(0, 1, DIFF), (1, 1, N), (2, 4, BASE), (6, 2, N)], id="DiffBeforeBase"
        ),
        pytest.param([(1, 5, DIFF, 0)], [(0, 1, N), (1, 5, DIFF), (6, 2, N)], id="BaseInsideDiff"),
        pytest.param(
            [(3, 1, DIFF, 0)],
            [(0, 2, N), (2, 1, BASE), (3, 1, DIFF), (4, 2, BASE), (6, 2, N)],
            id="DiffInsideBase",
        ),
        pytest.param(
            [(1, 4, DIFF, 0)],
            [(0, 1, N), (1, 4, DIFF), (5, 1, BASE), (6, 2, N)],
            id="BaseAfterDiffWithOverlap",
        ),
        pytest.param(
            [(3, 4, DIFF, 0)],
            [(0, 2, N), (2, 1, BASE), (3, 4, DIFF), (7, 1, N)],
            id="DiffAfterBaseWithOverlap",
        ),
    ],
)
def test_merge_matches_upstream_cases_and_validates(
    diff: list[tuple[int, int, uuid.UUID, int]], expected: list[tuple[int, ...]]
) -> None:
    merged = merge_mappings(table(SIMPLE_BASE, B), table(diff, B))
    assert [r[:3] for r in rows(merged, B)] == [e[:3] for e in expected]
    validate_mappings(merged, 8 * B, B)


@pytest.mark.parametrize(
    ("base", "diff", "expected"),
    [
        ([(0, 6, A, 0)], [(2, 2, D, 0)], [(0, 2, A, 0), (2, 2, D, 0), (4, 2, A, 4)]),
        ([(0, 1, P, 0), (1, 4, A, 0)], [(0, 3, D, 0)], [(0, 3, D, 0), (3, 2, A, 2)]),
        ([(0, 4, A, 0), (4, 2, P, 0)], [(2, 4, D, 0)], [(0, 2, A, 0), (2, 4, D, 0)]),
        (
            [(0, 6, A, 0)],
            [(1, 1, D, 0), (4, 1, D, 1)],
            [(0, 1, A, 0), (1, 1, D, 0), (2, 2, A, 2), (4, 1, D, 1), (5, 1, A, 5)],
        ),
        (
            [(0, 2, X, 0), (2, 4, A, 0), (6, 2, Y, 0)],
            [(3, 2, D, 0)],
            [(0, 2, X, 0), (2, 1, A, 0), (3, 2, D, 0), (5, 1, A, 3), (6, 2, Y, 0)],
        ),
    ],
)
def test_merge_splits_keep_storage_offsets(
    base: list[tuple[int, int, uuid.UUID, int]],
    diff: list[tuple[int, int, uuid.UUID, int]],
    expected: list[tuple[int, int, uuid.UUID, int]],
) -> None:
    assert rows(merge_mappings(table(base, B), table(diff, B)), B) == expected


def test_merge_with_empty_diff_returns_base_itself() -> None:
    base = table(SIMPLE_BASE, B)
    assert merge_mappings(base, MappingTable.empty()) is base


def test_merge_appends_diff_past_base_end_for_grown_device() -> None:
    merged = merge_mappings(table([(0, 4, A, 0)]), table([(4, 1, D, 0), (5, 3, N, 0)]))
    assert rows(merged) == [(0, 4, A, 0), (4, 1, D, 0), (5, 3, N, 0)]


def test_merge_keeps_adjacent_same_build_items_apart() -> None:
    merged = merge_mappings(table([(0, 2, A, 0), (2, 2, A, 2)]), table([(4, 1, D, 0)]))
    assert rows(merged) == [(0, 2, A, 0), (2, 2, A, 2), (4, 1, D, 0)]


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        pytest.param([], [], id="empty"),
        pytest.param([(0, 2, BASE, 0)], [(0, 2, BASE, 0)], id="single"),
        pytest.param(
            [(0, 1, A, 0), (1, 1, D, 0), (2, 1, X, 0)],
            [(0, 1, A, 0), (1, 1, D, 0), (2, 1, X, 0)],
            id="distinct",
        ),
        pytest.param([(0, 2, BASE, 0), (2, 2, BASE, 2)], [(0, 4, BASE, 0)], id="two-adjacent"),
        pytest.param(
            [(0, 1, A, 0), (1, 1, A, 1), (2, 1, D, 0), (3, 1, X, 0), (4, 1, X, 1), (5, 1, X, 2)],
            [(0, 2, A, 0), (2, 1, D, 0), (3, 3, X, 0)],
            id="mixed",
        ),
        pytest.param(
            [(0, 2, BASE, 0), (2, 0, BASE, 2), (2, 2, BASE, 2)], [(0, 4, BASE, 0)], id="zero-length"
        ),
        pytest.param(
            [(0, 2, BASE, 0), (2, 2, BASE, 10)], [(0, 2, BASE, 0), (2, 2, BASE, 10)], id="storage-gap"
        ),
        pytest.param([(0, 2, BASE, 4), (2, 3, BASE, 6)], [(0, 5, BASE, 4)], id="contiguous-storage"),
        pytest.param([(0, 2, N, 0), (2, 2, N, 99)], [(0, 4, N, 0)], id="nil-regardless-of-storage"),
    ],
)
def test_normalize_joins_contiguous_neighbours(
    items: list[tuple[int, int, uuid.UUID, int]], expected: list[tuple[int, int, uuid.UUID, int]]
) -> None:
    assert rows(normalize_mappings(table(items, B)), B) == expected


def test_normalize_single_item_validates_at_its_size() -> None:
    validate_mappings(normalize_mappings(table([(0, 2, BASE, 0)], B)), 2 * B, B)


def test_normalize_leaves_input_unchanged() -> None:
    items = table([(0, 2, BASE, 0), (2, 2, BASE, 2), (4, 2, DIFF, 0)], B)
    before = items.records()
    result = normalize_mappings(items)
    assert len(result) == 2
    assert items.records() == before


@pytest.mark.parametrize(
    ("items", "size", "message"),
    [
        ([(0, 2, A, 0), (3, 1, A, 2)], 4, "does not start at the correct offset"),
        ([(1, 3, A, 0)], 4, "does not start at the correct offset"),
        ([(0, 1, A, 0)], 4, "does not cover the whole size"),
        ([(0, 5, A, 0)], 4, "goes beyond the size"),
    ],
)
def test_validate_rejects_gaps_wrong_totals_and_overruns(
    items: list[tuple[int, int, uuid.UUID, int]], size: int, message: str
) -> None:
    with pytest.raises(MappingError, match=message):
        validate_mappings(table(items, B), size * B, B)


def test_validate_rejects_length_not_multiple_of_block_size() -> None:
    with pytest.raises(MappingError, match="should be a multiple of block size"):
        validate_mappings(table([(0, 4096 + 1, A, 0)]), 4097, 4096)


def test_validate_error_shows_the_offending_mapping() -> None:
    with pytest.raises(MappingError, match=r"mapping validation failed: the following mapping\n- 3-4 "):
        validate_mappings(table([(0, 2, A, 0), (3, 1, A, 2)], B), 4 * B, B)


def test_validate_accepts_empty_table_for_empty_device_only() -> None:
    validate_mappings(MappingTable.empty(), 0, B)
    with pytest.raises(MappingError):
        validate_mappings(MappingTable.empty(), B, B)


def test_bitmap_runs_are_packed_back_to_back_in_storage() -> None:
    mapped = mapping_from_bitmap(D, np.array([1, 2, 3, 7, 9, 10]), B)
    assert rows(mapped, B) == [(1, 3, D, 0), (7, 1, D, 3), (9, 2, D, 4)]


def test_identity_bitmap_keeps_storage_at_device_offset() -> None:
    mapped = identity_mapping_from_bitmap(D, np.array([1, 3, 4]), B)
    assert rows(mapped, B) == [(1, 1, D, 1), (3, 2, D, 3)]


def test_empty_bitmap_gives_no_mappings() -> None:
    assert len(mapping_from_bitmap(D, np.array([], dtype=np.uint64), B)) == 0


def test_bitmap_rejects_unsorted_indices() -> None:
    with pytest.raises(MappingError, match="sorted and unique"):
        mapping_from_bitmap(D, np.array([3, 1]), B)


POOL = [NIL_UUID, A, D, X]


@st.composite
def sorted_lists(draw: st.DrawFn, max_items: int = 12) -> list[Mapping]:
    """Sorted, non-overlapping items with gaps and zero-length items anywhere between them."""
    count = draw(st.integers(0, max_items))
    items = []
    offset = draw(st.integers(0, 3))
    for _ in range(count):
        length = draw(st.integers(0, 4))
        build = draw(st.sampled_from(POOL))
        storage = draw(st.integers(0, 20))
        items.append(Mapping(offset, length, build, storage))
        offset += length + draw(st.sampled_from([0, 0, 0, 1, 2]))
    return items


@settings(max_examples=1500, deadline=None)
@given(sorted_lists(), sorted_lists())
@example(
    base=[Mapping(0, 4, A, 0)],
    diff=[Mapping(2, 2, D, 0), Mapping(4, 0, X, 0), Mapping(5, 1, D, 2)],
)
@example(base=[Mapping(0, 2, A, 0), Mapping(2, 0, X, 0), Mapping(2, 2, A, 2)], diff=[Mapping(0, 2, D, 0)])
@example(base=[Mapping(0, 0, X, 0), Mapping(0, 2, A, 0)], diff=[Mapping(0, 0, D, 0)])
def test_fast_merge_equals_sequential_oracle(base: list[Mapping], diff: list[Mapping]) -> None:
    merged = merge_mappings(MappingTable.from_records(base), MappingTable.from_records(diff))
    assert merged.records() == oracle_merge(base, diff)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.sampled_from(POOL)), max_size=10), st.data())
def test_fast_merge_equals_oracle_over_a_covering_base(
    parts: list[tuple[int, uuid.UUID]], data: st.DataObject
) -> None:
    base, offset = [], 0
    for length, build in parts:
        base.append(Mapping(offset, length, build, offset))
        offset += length
    diff = data.draw(sorted_lists())
    merged = merge_mappings(MappingTable.from_records(base), MappingTable.from_records(diff))
    assert merged.records() == oracle_merge(base, diff)


@settings(max_examples=500, deadline=None)
@given(sorted_lists(max_items=15))
def test_fast_normalize_equals_sequential_oracle(items: list[Mapping]) -> None:
    assert normalize_mappings(MappingTable.from_records(items)).records() == oracle_normalize(items)

"""Prefetch data: first-access recording, merging runs into metadata, and extents to load."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.errors import UsageError
from ember.memory import AccessKind, AccessRecorder, Extent, PageAccesses, coalesce, merge_runs
from ember.memory.prefetch import CHUNK_PAGES

PAGE = 4096


def run(indices: list[int], kinds: str) -> PageAccesses:
    return PageAccesses(
        PAGE, np.array(indices, dtype=np.int64), np.frombuffer(kinds.encode(), dtype=np.uint8).copy()
    )


def test_a_page_keeps_its_first_access_order_and_type() -> None:
    recorder = AccessRecorder(16 * PAGE, PAGE)
    recorder.record(8 * PAGE, 2 * PAGE, AccessKind.READ)
    recorder.record(2 * PAGE, 1, AccessKind.WRITE)
    recorder.record(7 * PAGE, 3 * PAGE, AccessKind.WRITE)
    seen = recorder.snapshot()
    assert seen.indices.tolist() == [8, 9, 2, 7]
    assert bytes(seen.kinds) == b"rrww"


def test_an_unaligned_request_marks_every_page_it_touches() -> None:
    recorder = AccessRecorder(16 * PAGE, PAGE)
    recorder.record(PAGE - 1, 2, AccessKind.READ)
    assert recorder.snapshot().indices.tolist() == [0, 1]


def test_reading_a_page_again_is_counted_but_writing_back_is_not() -> None:
    recorder = AccessRecorder(16 * PAGE, PAGE)
    recorder.record(0, 4 * PAGE, AccessKind.PREFETCH)
    recorder.record(2 * PAGE, 4 * PAGE, AccessKind.READ)
    recorder.record(0, PAGE, AccessKind.WRITE)
    assert recorder.pages_reread == 2
    assert recorder.count(AccessKind.PREFETCH) == 4
    assert recorder.count(AccessKind.READ) == 2


def test_a_request_past_the_end_stops_at_the_last_page() -> None:
    recorder = AccessRecorder(4 * PAGE, PAGE)
    recorder.record(3 * PAGE, 8 * PAGE, AccessKind.READ)
    assert recorder.snapshot().indices.tolist() == [3]


def test_merging_keeps_only_pages_every_run_touched_by_average_order() -> None:
    merged = merge_runs([run([5, 1, 9, 3], "rrrr"), run([1, 3, 7, 5], "rrrr")])
    # positions: 1 -> (1+0)/2, 3 -> (3+1)/2, 5 -> (0+3)/2
    assert merged.indices == (1, 5, 3)
    assert merged.block_size == PAGE


def test_merging_turns_disagreeing_types_into_reads() -> None:
    merged = merge_runs([run([1, 2, 3], "wwr"), run([1, 2, 3], "wrp")])
    assert merged.access_types == ("w", "r", "r")


def test_merging_breaks_ties_by_page_index() -> None:
    merged = merge_runs([run([4, 2], "rr"), run([2, 4], "rr")])
    assert merged.indices == (2, 4)


def test_merging_runs_of_different_page_sizes_is_refused() -> None:
    other = PageAccesses(2 << 20, np.array([1], dtype=np.int64), np.array([ord("r")], dtype=np.uint8))
    with pytest.raises(UsageError, match="page size"):
        merge_runs([run([1], "r"), other])


def test_contiguous_pages_become_one_extent_in_order_of_their_earliest_page() -> None:
    assert coalesce([7, 8, 2, 9, 3], PAGE) == [Extent(7 * PAGE, 3 * PAGE), Extent(2 * PAGE, 2 * PAGE)]


def test_extents_are_capped_and_duplicates_loaded_once() -> None:
    extents = coalesce([0, 1, 2, 3, 4, 2], PAGE, max_extent_bytes=2 * PAGE)
    assert extents == [Extent(0, 2 * PAGE), Extent(2 * PAGE, 2 * PAGE), Extent(4 * PAGE, PAGE)]


def test_nothing_to_prefetch_gives_no_extents() -> None:
    assert coalesce([], PAGE) == []


@given(st.lists(st.integers(0, 300), max_size=200), st.integers(1, 9))
def test_extents_cover_exactly_the_listed_pages(indices: list[int], cap_pages: int) -> None:
    extents = coalesce(indices, PAGE, max_extent_bytes=cap_pages * PAGE)
    covered = [page for e in extents for page in range(e.offset // PAGE, (e.offset + e.length_bytes) // PAGE)]
    assert sorted(covered) == sorted(set(indices))
    assert all(e.length_bytes <= cap_pages * PAGE for e in extents)
    if indices:
        assert extents[0].offset <= indices[0] * PAGE < extents[0].offset + extents[0].length_bytes


def test_recording_costs_memory_for_the_pages_touched_not_for_the_size_the_header_claims() -> None:
    tracemalloc.start()
    try:
        recorder = AccessRecorder(64 << 30, PAGE)  # a 64 GiB device: 16 Mi pages
        for page in (0, 1, 5000, 3_000_000, (16 << 20) - 1):
            recorder.record(page * PAGE, PAGE, AccessKind.READ)
        recorder.record((16 << 20) * PAGE, PAGE, AccessKind.READ)  # past the end: ignored
        assert recorder.count(AccessKind.READ) == 5
        assert recorder.snapshot().indices.tolist() == [0, 1, 5000, 3_000_000, (16 << 20) - 1]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_request_spanning_recording_chunks_keeps_the_order_of_its_pages() -> None:
    recorder = AccessRecorder(1 << 30, PAGE)
    recorder.record((CHUNK_PAGES - 2) * PAGE, 4 * PAGE, AccessKind.PREFETCH)
    recorder.record((CHUNK_PAGES - 3) * PAGE, 2 * PAGE, AccessKind.READ)
    seen = recorder.snapshot()
    first = CHUNK_PAGES - 2
    assert seen.indices.tolist() == [first, first + 1, first + 2, first + 3, first - 1]
    assert bytes(seen.kinds) == b"ppppr"
    assert recorder.pages_reread == 1

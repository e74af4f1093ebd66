"""Page state transitions (facts file 3.2) and the first-access record."""

from __future__ import annotations

import tracemalloc

import pytest

from ember.errors import UsageError
from ember.uffd import AccessRecorder, AccessType, PageState, PageTracker


def _tracker(*states: PageState) -> PageTracker:
    tracker = PageTracker(len(states))
    for page, state in enumerate(states):
        tracker.set_range(page, page + 1, state)
    return tracker


def _all(tracker: PageTracker) -> list[PageState]:
    return [tracker.state_of(page) for page in range(tracker.page_count)]


ALL = (PageState.NOT_PRESENT, PageState.DIRTY, PageState.ZERO, PageState.REMOVED, PageState.CLEAN)


@pytest.mark.parametrize("installed", [PageState.CLEAN, PageState.ZERO])
def test_an_install_upgrades_only_absent_and_removed_pages(installed: PageState) -> None:
    tracker = _tracker(*ALL)
    tracker.mark_installed(0, 5, installed)
    assert _all(tracker) == [installed, PageState.DIRTY, PageState.ZERO, installed, PageState.CLEAN]
    single = _tracker(PageState.DIRTY)
    single.mark_installed(0, 1, installed)
    assert _all(single) == [PageState.DIRTY]


def test_an_install_cannot_claim_a_page_dirty() -> None:
    with pytest.raises(UsageError, match="ZERO or CLEAN"):
        PageTracker(1).mark_installed(0, 1, PageState.DIRTY)


def test_a_write_makes_pages_dirty_but_leaves_removed_pages_alone() -> None:
    tracker = _tracker(*ALL)
    tracker.mark_written(0, 5)
    assert _all(tracker) == [
        PageState.DIRTY,
        PageState.DIRTY,
        PageState.DIRTY,
        PageState.REMOVED,
        PageState.DIRTY,
    ]


def test_export_gives_dirty_pages_and_zero_or_removed_pages_as_empty() -> None:
    tracker = _tracker(*ALL, *ALL)
    dirty, empty = tracker.export()
    assert dirty.tolist() == [1, 6]
    assert empty.tolist() == [2, 3, 7, 8]
    assert tracker.count(PageState.CLEAN) == 2


def test_absent_run_stops_at_the_first_present_page_or_the_limit() -> None:
    tracker = _tracker(PageState.NOT_PRESENT, PageState.NOT_PRESENT, PageState.CLEAN, PageState.NOT_PRESENT)
    assert tracker.absent_run(0, 8) == 2
    assert tracker.absent_run(0, 1) == 1
    assert tracker.absent_run(2, 8) == 0
    assert tracker.absent_run(3, 8) == 1


def test_pages_outside_the_memory_are_a_usage_error() -> None:
    tracker = PageTracker(4)
    with pytest.raises(UsageError, match="outside guest memory of 4 pages"):
        tracker.set_range(3, 5, PageState.DIRTY)
    with pytest.raises(UsageError):
        tracker.state_of(4)
    with pytest.raises(UsageError):
        PageTracker(-1)


def test_the_recorder_keeps_each_pages_first_access_in_order() -> None:
    recorder = AccessRecorder(4096)
    for page, access in [
        (7, AccessType.READ),
        (2, AccessType.WRITE),
        (7, AccessType.WRITE),
        (9, AccessType.PREFETCH),
    ]:
        recorder.record(page, access)
    prefetch = recorder.prefetch()
    assert prefetch.indices == (7, 2, 9)
    assert prefetch.access_types == ("r", "w", "p")
    assert prefetch.block_size == 4096


def test_accesses_from_the_backlog_come_before_the_ones_recorded_after_them() -> None:
    pending = [[(7, AccessType.READ), (3, AccessType.WRITE)], [(9, AccessType.READ), (7, AccessType.WRITE)]]
    recorder = AccessRecorder(4096, backlog=lambda: pending.pop(0) if pending else [])
    recorder.record(5, AccessType.PREFETCH)
    recorder.record(3, AccessType.PREFETCH)
    prefetch = recorder.prefetch()
    assert list(zip(prefetch.indices, prefetch.access_types, strict=True)) == [
        (7, "r"),
        (3, "w"),
        (5, "p"),
        (9, "r"),
    ]


def test_a_tracker_for_a_huge_memfile_costs_memory_only_for_the_pages_it_tracks() -> None:
    pages = 1 << 29  # a 2 TiB memfile header of 4 KiB pages
    tracemalloc.start()
    try:
        tracker = PageTracker(pages)
        tracker.mark_written(3, 4)
        tracker.set_range(pages - 2, pages, PageState.REMOVED)
        tracker.mark_installed(100, 102, PageState.ZERO)
        dirty, empty = tracker.export()
        assert tracker.count(PageState.DIRTY) == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert dirty.tolist() == [3]
    assert empty.tolist() == [100, 101, pages - 2, pages - 1]
    assert tracker.page_count == pages
    assert peak < 128 << 20

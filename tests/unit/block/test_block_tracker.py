from __future__ import annotations

import numpy as np
import pytest

from ember.block import BlockState, BlockTracker, state_runs
from ember.errors import UsageError


def states(tracker: BlockTracker) -> list[BlockState]:
    return [tracker.state_of(block) for block in range(tracker.block_count)]


def test_a_new_tracker_knows_no_block_and_exports_two_empty_sets() -> None:
    tracker = BlockTracker(8)
    assert states(tracker) == [BlockState.NOT_PRESENT] * 8
    dirty, empty = tracker.export()
    assert dirty.dtype == np.uint64 and empty.dtype == np.uint64
    assert dirty.tolist() == [] and empty.tolist() == []


def test_state_values_match_the_byte_stored_per_block() -> None:
    assert [int(state) for state in BlockState] == [0, 1, 2]
    assert [state.name for state in BlockState] == ["NOT_PRESENT", "DIRTY", "ZERO"]


def test_each_mark_overrides_the_previous_state_of_its_blocks() -> None:
    tracker = BlockTracker(4)
    tracker.mark(0, 4, BlockState.DIRTY)
    tracker.mark(1, 2, BlockState.ZERO)
    tracker.mark(2, 3, BlockState.NOT_PRESENT)
    assert states(tracker) == [BlockState.DIRTY, BlockState.ZERO, BlockState.NOT_PRESENT, BlockState.DIRTY]
    tracker.mark(1, 2, BlockState.DIRTY)
    tracker.mark(3, 4, BlockState.ZERO)
    assert states(tracker) == [BlockState.DIRTY, BlockState.DIRTY, BlockState.NOT_PRESENT, BlockState.ZERO]


def test_partially_overlapping_marks_keep_the_latest_state_per_block() -> None:
    tracker = BlockTracker(10)
    tracker.mark(1, 6, BlockState.DIRTY)
    tracker.mark(4, 9, BlockState.ZERO)
    tracker.mark(0, 2, BlockState.ZERO)
    dirty, empty = tracker.export()
    assert dirty.tolist() == [2, 3]
    assert empty.tolist() == [0, 1, 4, 5, 6, 7, 8]


def test_export_puts_dirty_in_dirty_zero_in_empty_and_untouched_in_neither() -> None:
    tracker = BlockTracker(7)
    tracker.mark(5, 7, BlockState.DIRTY)
    tracker.mark(0, 1, BlockState.DIRTY)
    tracker.mark(2, 4, BlockState.ZERO)
    dirty, empty = tracker.export()
    assert dirty.tolist() == [0, 5, 6]
    assert empty.tolist() == [2, 3]
    assert 1 not in dirty.tolist() + empty.tolist() and 4 not in dirty.tolist() + empty.tolist()


@pytest.mark.parametrize(("first", "end"), [(3, 3), (5, 2)])
def test_empty_and_inverted_ranges_change_nothing(first: int, end: int) -> None:
    tracker = BlockTracker(8)
    tracker.mark(first, end, BlockState.DIRTY)
    assert states(tracker) == [BlockState.NOT_PRESENT] * 8


def test_export_returns_arrays_later_marks_and_caller_edits_do_not_touch() -> None:
    tracker = BlockTracker(6)
    tracker.mark(0, 2, BlockState.DIRTY)
    tracker.mark(4, 5, BlockState.ZERO)
    dirty, empty = tracker.export()
    tracker.mark(0, 6, BlockState.NOT_PRESENT)
    assert dirty.tolist() == [0, 1] and empty.tolist() == [4]
    tracker.mark(0, 2, BlockState.DIRTY)
    dirty[:] = 5
    again, _ = tracker.export()
    assert again.tolist() == [0, 1]


def test_states_returns_a_copy_of_a_range() -> None:
    tracker = BlockTracker(4)
    tracker.mark(1, 3, BlockState.ZERO)
    window = tracker.states(1, 4)
    assert window.tolist() == [2, 2, 0]
    window[:] = 1
    assert tracker.state_of(1) == BlockState.ZERO


@pytest.mark.parametrize(("first", "end"), [(-1, 2), (3, 9)])
def test_ranges_past_the_device_are_refused(first: int, end: int) -> None:
    tracker = BlockTracker(8)
    with pytest.raises(UsageError, match="outside the device"):
        tracker.mark(first, end, BlockState.DIRTY)
    with pytest.raises(UsageError):
        tracker.state_of(8)


def test_state_runs_split_at_every_state_change() -> None:
    runs = state_runs(np.array([0, 0, 1, 2, 2, 2, 0], dtype=np.uint8))
    assert runs == [
        (0, 2, BlockState.NOT_PRESENT),
        (2, 3, BlockState.DIRTY),
        (3, 6, BlockState.ZERO),
        (6, 7, BlockState.NOT_PRESENT),
    ]
    assert state_runs(np.array([], dtype=np.uint8)) == []

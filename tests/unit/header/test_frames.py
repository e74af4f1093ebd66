"""Frame tables: locating frames in both address spaces and trimming to referenced ranges."""

from __future__ import annotations

import numpy as np
import pytest

from ember.errors import HeaderError
from ember.header import CompressionType, Frame, FrameTable

LZ4 = CompressionType.LZ4


def dense() -> FrameTable:
    return FrameTable.from_sizes(LZ4, [(4096, 1000), (4096, 2000), (4096, 1500)])


def trimmed(table: FrameTable, ranges: list[tuple[int, int]]) -> FrameTable:
    starts = np.array([r[0] for r in ranges], dtype=np.uint64)
    lengths = np.array([r[1] for r in ranges], dtype=np.uint64)
    return table.trim_to_ranges(starts, lengths)


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (0, Frame(0, 0, 4096, 1000)),
        (4096, Frame(4096, 1000, 4096, 2000)),
        (8191, Frame(4096, 1000, 4096, 2000)),
        (8192, Frame(8192, 3000, 4096, 1500)),
    ],
)
def test_locate_finds_the_frame_holding_a_byte(offset: int, expected: Frame) -> None:
    assert dense().locate(offset) == expected


def test_locate_compressed_gives_compressed_offset_and_size() -> None:
    assert dense().locate_compressed(8192) == (3000, 1500)


@pytest.mark.parametrize("offset", [12288, 1 << 40])
def test_locate_beyond_end_is_an_error(offset: int) -> None:
    with pytest.raises(HeaderError, match="not covered"):
        dense().locate(offset)


def test_locate_compressed_mid_frame_is_an_error() -> None:
    with pytest.raises(HeaderError, match="frame boundary"):
        dense().locate_compressed(100)


def test_table_may_start_at_a_non_zero_offset() -> None:
    table = FrameTable.from_sizes(LZ4, [(4096, 10)], start_u=8192, start_c=500)
    assert table.locate_compressed(8192) == (500, 10)
    with pytest.raises(HeaderError):
        table.locate(0)


def test_trim_keeps_every_frame_when_all_are_referenced() -> None:
    assert trimmed(dense(), [(0, 12288)]) == dense()


def test_trim_to_one_range_keeps_only_overlapping_frames() -> None:
    assert trimmed(dense(), [(4096, 1)]).frames() == [Frame(4096, 1000, 4096, 2000)]


def test_trim_to_two_disjoint_ranges_keeps_both_and_still_locates() -> None:
    table = trimmed(dense(), [(8192, 4096), (0, 100)])
    assert [f.start_u for f in table.frames()] == [0, 8192]
    assert table.locate_compressed(8192) == (3000, 1500)


def test_trim_without_ranges_keeps_the_whole_table() -> None:
    assert trimmed(dense(), []) is not None
    assert trimmed(dense(), []) == dense()


def test_range_ending_at_a_frame_start_does_not_keep_that_frame() -> None:
    assert len(trimmed(dense(), [(0, 4096)])) == 1


@pytest.mark.parametrize(
    "frames",
    [
        [Frame(0, 0, 0, 10)],
        [Frame(0, 0, 4096, 10), Frame(100, 10, 4096, 10)],
        [Frame(0, 0, 4096, 10), Frame(4096, 5, 4096, 10)],
    ],
)
def test_invalid_frames_are_rejected(frames: list[Frame]) -> None:
    with pytest.raises(HeaderError):
        FrameTable.from_frames(LZ4, frames)


def test_uncompressed_frame_table_is_rejected() -> None:
    with pytest.raises(HeaderError, match="compression type"):
        FrameTable.from_sizes(CompressionType.NONE, [(4096, 4096)])

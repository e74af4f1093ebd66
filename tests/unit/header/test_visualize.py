"""Debug renderings match the upstream inspection output."""

from __future__ import annotations

import uuid

import pytest
from header_rows import table

from ember.errors import UsageError
from ember.header import NIL_UUID, Mapping, format_mapping, visualize

BUILD = uuid.UUID("6f1c2a3b-4d5e-4f60-8172-839405a6b7c8")
A, T = uuid.UUID(int=0xA), uuid.UUID(int=0x7)


def test_format_mapping_matches_upstream_layout() -> None:
    line = format_mapping(Mapping(2 * 4096, 3 * 4096, BUILD, 4096), 4096)
    assert line == (
        "2-5            [       8192,      20480) := [       4096,      16384) "
        "⊂ 6f1c2a3b-4d5e-4f60-8172-839405a6b7c8, 12288 B"
    )


def test_visualize_draws_groups_with_top_winning_and_wraps() -> None:
    mappings = table([(0, 2, NIL_UUID, 0), (2, 3, A, 0), (5, 4, T, 0), (9, 1, BUILD, 0)])
    grid = visualize(mappings, 10, 1, 4, bottom_group={NIL_UUID, A, T}, top_group={T})
    assert grid.split("\n") == ["▓▓▓▓", "▓███", "█░"]


def test_visualize_without_groups_is_all_skipped_blocks() -> None:
    assert visualize(table([(0, 3, A, 0)]), 3, 1, 128) == "░░░"


def test_visualize_rejects_zero_columns() -> None:
    with pytest.raises(UsageError):
        visualize(table([(0, 3, A, 0)]), 3, 1, 0)

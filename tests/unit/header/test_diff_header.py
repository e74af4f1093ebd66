"""Diff headers: a layer's dirty and empty blocks laid over its parent's header."""

from __future__ import annotations

import logging
import uuid

import numpy as np
import pytest

from ember.errors import MappingError
from ember.header import (
    NIL_UUID,
    PAGE_SIZE,
    BuildData,
    DiffMetadata,
    Header,
    Mapping,
    MappingTable,
    Metadata,
    validate_mappings,
)

SOURCE = uuid.UUID(int=0x50)
CHILD = uuid.UUID(int=0xC1)
OTHER = uuid.UUID(int=0x07)
P = PAGE_SIZE


def parent(blocks: int, version: int = 3, builds: dict[uuid.UUID, BuildData] | None = None) -> Header:
    return Header(Metadata(version, P, blocks * P, 4, SOURCE, OTHER), MappingTable.empty(), builds)


def diff(dirty: list[int], empty: tuple[int, ...] = ()) -> DiffMetadata:
    return DiffMetadata(np.array(dirty, dtype=np.uint64), np.array(empty, dtype=np.uint64), P)


def test_diff_header_maps_dirty_to_child_empty_to_nil_rest_to_parent() -> None:
    header = diff([1, 2, 5], [3]).to_diff_header(parent(8), CHILD)
    assert header.mappings.records() == [
        Mapping(0, P, SOURCE, 0),
        Mapping(P, 2 * P, CHILD, 0),
        Mapping(3 * P, P, NIL_UUID, 0),
        Mapping(4 * P, P, SOURCE, 4 * P),
        Mapping(5 * P, P, CHILD, 2 * P),
        Mapping(6 * P, 2 * P, SOURCE, 6 * P),
    ]
    assert header.metadata == Metadata(3, P, 8 * P, 5, CHILD, OTHER)
    assert header.pending_upload
    assert header.builds is None


def test_unchanged_layer_normalizes_back_to_one_mapping() -> None:
    header = diff([]).to_diff_header(parent(4), CHILD)
    assert header.mappings.records() == [Mapping(0, 4 * P, SOURCE, 0)]


def test_builds_keep_only_entries_still_referenced() -> None:
    builds = {SOURCE: BuildData(4 * P), OTHER: BuildData(7)}
    header = diff([0, 1, 2, 3]).to_diff_header(parent(4, version=4, builds=builds), CHILD)
    assert header.builds == {}
    header = diff([0]).to_diff_header(parent(4, version=4, builds=builds), CHILD)
    assert header.builds == {SOURCE: BuildData(4 * P)}


def test_grown_rootfs_resized_diff_header() -> None:
    header = diff([4], [5, 6, 7]).to_diff_header(parent(4), CHILD, new_size=8 * P)
    assert header.metadata.size == 8 * P
    assert header.resolve(2 * P).build_id == SOURCE
    assert header.resolve(4 * P).build_id == CHILD
    assert header.resolve(6 * P).build_id == NIL_UUID
    validate_mappings(header.mappings, 8 * P, P)


def test_resized_diff_header_that_leaves_new_blocks_unmapped_is_rejected() -> None:
    with pytest.raises(MappingError, match="does not cover the whole size"):
        diff([4]).to_diff_header(parent(4, version=1), CHILD, new_size=8 * P)


def test_provisional_header_keeps_storage_at_device_offsets() -> None:
    header = diff([1, 3]).to_provisional_diff_header(parent(6), CHILD)
    for page in (1, 3):
        resolved = header.resolve(page * P)
        assert (resolved.build_id, resolved.storage_offset) == (CHILD, page * P)
    assert [header.resolve(page * P).build_id for page in (0, 2, 4, 5)] == [SOURCE] * 4


def test_invalid_diff_is_an_error_from_v3_and_a_warning_before(caplog: pytest.LogCaptureFixture) -> None:
    block_past_end = diff([9])
    with pytest.raises(MappingError):
        block_past_end.to_diff_header(parent(4), CHILD)
    with caplog.at_level(logging.WARNING):
        block_past_end.to_diff_header(parent(4, version=2), CHILD)
    assert "does not validate" in caplog.text

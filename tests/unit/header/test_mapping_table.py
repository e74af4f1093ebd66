"""The columnar mapping table behaves like an immutable list of Mapping records."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from ember.errors import MappingError
from ember.header import NIL_UUID, Mapping, MappingTable

A, B = uuid.UUID(int=0xA), uuid.UUID(int=0xB)
RECORDS = [Mapping(0, 4096, A, 0), Mapping(4096, 8192, NIL_UUID, 0), Mapping(12288, 4096, B, 4096)]


def test_records_round_trip_through_columns() -> None:
    table = MappingTable.from_records(RECORDS)
    assert table.records() == RECORDS
    assert len(table) == 3
    assert table[-1] == RECORDS[-1]
    assert table.offsets.dtype == np.uint64 and table.build_index.dtype == np.uint32


def test_columns_are_read_only() -> None:
    table = MappingTable.from_records(RECORDS)
    with pytest.raises(ValueError, match="read-only"):
        table.offsets[0] = 1


def test_constructor_copies_so_later_changes_to_inputs_do_not_leak_in() -> None:
    offsets = np.array([0], dtype=np.uint64)
    table = MappingTable(offsets, [4096], [0], [0], (A,))
    offsets[0] = 4096
    assert table[0].offset == 0


def test_equality_ignores_build_tuple_order_and_unused_builds() -> None:
    one = MappingTable([0, 4096], [4096, 4096], [0, 0], [0, 1], (A, B))
    other = MappingTable([0, 4096], [4096, 4096], [0, 0], [2, 0], (B, NIL_UUID, A))
    assert one == other
    assert one != MappingTable([0, 4096], [4096, 4096], [0, 0], [0, 0], (A,))


def test_build_ids_are_used_builds_in_first_appearance_order() -> None:
    table = MappingTable([0, 1, 2], [1, 1, 1], [0, 0, 0], [2, 0, 2], (A, NIL_UUID, B))
    assert table.build_ids() == (B, A)
    assert MappingTable.from_records(RECORDS).referenced_builds() == (A, B)


def test_mismatched_columns_are_rejected() -> None:
    with pytest.raises(MappingError, match="different lengths"):
        MappingTable([0, 1], [1], [0], [0], (A,))


def test_build_index_past_builds_is_rejected() -> None:
    with pytest.raises(MappingError, match="past the 1 known builds"):
        MappingTable([0], [1], [0], [1], (A,))


def test_negative_values_are_rejected() -> None:
    with pytest.raises(MappingError, match="unsigned"):
        MappingTable([-1], [1], [0], [0], (A,))

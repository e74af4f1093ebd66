"""V5 headers: columnar varint mappings in 4 KiB pages, nil reconstruction, size and guards."""

from __future__ import annotations

import struct
import uuid

import lz4.frame
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.errors import HeaderError
from ember.header import (
    HUGEPAGE_SIZE,
    NIL_UUID,
    BuildData,
    CompressionType,
    FrameTable,
    Header,
    Mapping,
    MappingTable,
    Metadata,
    deserialize_header,
    serialize_header,
)
from ember.header.v5 import decode_uvarints, encode_uvarints

A = uuid.UUID("a0000000-0000-4000-8000-00000000000a")
B_ID = uuid.UUID("b0000000-0000-4000-8000-00000000000b")
PAGE = 4096


def header(mappings: list[Mapping], size: int, block_size: int = HUGEPAGE_SIZE, version: int = 5) -> Header:
    builds = {A: BuildData(size, bytes(32), FrameTable.from_sizes(CompressionType.LZ4, [(size, 999)]))}
    return Header(
        Metadata(version, block_size, size, 2, A, B_ID), MappingTable.from_records(mappings), builds
    )


def framed_v5(mapping_section: bytes, size: int) -> bytes:
    prefix = struct.pack("<QQQQ", 5, PAGE, size, 1) + A.bytes + B_ID.bytes
    inner = struct.pack("<I", 0) + mapping_section
    return prefix + struct.pack("<BI", 0, len(inner)) + lz4.frame.compress(inner)


def leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        chunk, value = value & 0x7F, value >> 7
        out.append(chunk | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_page_granular_mappings_round_trip_under_hugepage_block_size() -> None:
    mappings = [
        Mapping(0, PAGE, A, 0),
        Mapping(PAGE, 3 * PAGE, B_ID, 7 * PAGE),
        Mapping(4 * PAGE, HUGEPAGE_SIZE - 4 * PAGE, A, PAGE),
    ]
    original = header(mappings, HUGEPAGE_SIZE)
    assert deserialize_header(serialize_header(original)) == original


def test_nil_hole_round_trips_exactly() -> None:
    block = HUGEPAGE_SIZE
    mappings = [
        Mapping(0, 2 * block, A, 0),
        Mapping(2 * block, block, NIL_UUID, 0),
        Mapping(3 * block, block, B_ID, 0),
        Mapping(4 * block, 2 * block, A, 2 * block),
    ]
    read = deserialize_header(serialize_header(header(mappings, 6 * block)))
    assert read.mappings.records() == mappings


def test_nil_tail_is_reconstructed_up_to_the_device_size() -> None:
    read = deserialize_header(
        serialize_header(header([Mapping(0, PAGE, A, 0), Mapping(PAGE, 3 * PAGE, NIL_UUID, 0)], 4 * PAGE))
    )
    assert read.mappings.records() == [Mapping(0, PAGE, A, 0), Mapping(PAGE, 3 * PAGE, NIL_UUID, 0)]


def test_no_mappings_round_trip_as_default_mapping_rounded_to_pages() -> None:
    read = deserialize_header(serialize_header(header([], PAGE + 1, block_size=PAGE)))
    assert read.mappings.records() == [Mapping(0, 2 * PAGE, A, 0)]


def test_zero_entries_read_as_one_nil_mapping_over_the_device() -> None:
    read = deserialize_header(framed_v5(struct.pack("<II", 0, 0), 3 * PAGE))
    assert read.mappings.records() == [Mapping(0, 3 * PAGE, NIL_UUID, 0)]


def test_v5_and_v4_decode_to_identical_mappings_and_builds() -> None:
    builds = (A, B_ID, NIL_UUID)
    mappings = [Mapping(i * PAGE, PAGE, builds[i % 3], (i // 3) * PAGE * (i % 3 != 2)) for i in range(30)]
    v5 = deserialize_header(serialize_header(header(mappings, 30 * PAGE)))
    v4 = deserialize_header(serialize_header(header(mappings, 30 * PAGE, version=4)))
    assert v5.mappings == v4.mappings
    assert v5.builds == v4.builds


def test_fragmented_header_is_at_least_twice_smaller_than_v4() -> None:
    count = 50_000
    offsets = np.arange(count, dtype=np.uint64) * PAGE
    storage = (offsets // np.uint64(2 * PAGE)) * np.uint64(PAGE)
    table = MappingTable(offsets, np.full(count, PAGE), storage, np.arange(count) % 2, (A, B_ID))
    v5 = Header(Metadata(5, PAGE, count * PAGE, 1, A, A), table, {})
    v4 = Header(Metadata(4, PAGE, count * PAGE, 1, A, A), table, {})
    assert 2 * len(serialize_header(v5)) <= len(serialize_header(v4))
    assert deserialize_header(serialize_header(v5)).mappings == table


def test_corrupted_length_prefix_is_rejected() -> None:
    data = bytearray(serialize_header(header([Mapping(0, PAGE, A, 0)], PAGE)))
    data[65:69] = b"\xff\xff\xff\xff"
    with pytest.raises(HeaderError, match="cap"):
        deserialize_header(bytes(data))


def section(builds: list[uuid.UUID], columns: list[list[int]], zigzag_storage: bool = True) -> bytes:
    count = len(columns[0])
    out = struct.pack("<I", len(builds)) + b"".join(b.bytes for b in builds) + struct.pack("<I", count)
    for i, column in enumerate(columns):
        for value in column:
            out += leb128((value << 1) ^ (value >> 63) if i == 2 and zigzag_storage else value)
    return out


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        pytest.param([[0], [0], [0], [0]], "zero-length", id="zero-length"),
        pytest.param([[0, 1], [2, 1], [0, 0], [0, 0]], "overlaps", id="overlap"),
        pytest.param([[0], [5], [0], [0]], "beyond the device", id="past-end"),
        pytest.param([[0], [1], [0], [3]], "build index", id="index-out-of-range"),
        pytest.param([[1 << 33], [1], [0], [0]], "uint32", id="beyond-uint32"),
    ],
)
def test_malformed_mapping_sections_are_rejected(columns: list[list[int]], message: str) -> None:
    with pytest.raises(HeaderError, match=message):
        deserialize_header(framed_v5(section([A], columns), 4 * PAGE))


def test_entry_count_beyond_remaining_bytes_is_rejected() -> None:
    with pytest.raises(HeaderError, match="mapping count 1000"):
        deserialize_header(framed_v5(struct.pack("<II", 0, 1000) + bytes(8), 4 * PAGE))


def test_build_table_larger_than_remaining_bytes_is_rejected() -> None:
    with pytest.raises(HeaderError, match="build count 70000"):
        deserialize_header(framed_v5(struct.pack("<I", 70000), 4 * PAGE))


def test_truncated_varints_are_rejected() -> None:
    with pytest.raises(HeaderError, match="truncated"):
        deserialize_header(framed_v5(struct.pack("<II", 0, 1) + b"\x80\x80\x80\x80", 4 * PAGE))


@given(st.lists(st.integers(0, (1 << 64) - 1), max_size=50))
def test_varints_match_leb128_and_round_trip(values: list[int]) -> None:
    array = np.array(values, dtype=np.uint64)
    encoded = encode_uvarints(array)
    assert encoded == b"".join(leb128(v) for v in values)
    decoded, used = decode_uvarints(memoryview(encoded + b"\x05"), len(values))
    assert decoded.tolist() == values
    assert used == len(encoded)

"""V1-V3 headers: exact bytes, round trips, and the errors corrupt objects produce."""

from __future__ import annotations

import struct
import uuid

import pytest

from ember.errors import HeaderError, MappingError
from ember.header import (
    NIL_UUID,
    Header,
    Mapping,
    MappingTable,
    Metadata,
    deserialize_header,
    serialize_header,
)

BUILD = uuid.UUID("6f1c2a3b-4d5e-4f60-8172-839405a6b7c8")
BASE = uuid.UUID("0a0b0c0d-0e0f-4011-8213-141516171819")


def metadata(version: int = 3, size: int = 8192, generation: int = 7) -> Metadata:
    return Metadata(version, 4096, size, generation, BUILD, BASE)


def golden_bytes(records: list[tuple[int, int, uuid.UUID, int]], version: int = 3, size: int = 8192) -> bytes:
    prefix = struct.pack("<QQQQ", version, 4096, size, 7) + BUILD.bytes + BASE.bytes
    body = b"".join(struct.pack("<QQ", o, n) + b.bytes + struct.pack("<Q", s) for o, n, b, s in records)
    return prefix + body


ROUND_TRIP_RECORDS = [(0, 4096, BUILD, 0), (4096, 4096, BASE, 8192)]


def round_trip_header() -> Header:
    return Header(metadata(), MappingTable.from_records(Mapping(*r) for r in ROUND_TRIP_RECORDS))


def test_v3_serializes_to_exact_upstream_bytes() -> None:
    expected = golden_bytes(ROUND_TRIP_RECORDS)
    assert len(expected) == 64 + 2 * 40
    assert serialize_header(round_trip_header()) == expected


def test_v3_golden_bytes_read_back_with_storage_offsets_and_no_builds() -> None:
    header = deserialize_header(golden_bytes(ROUND_TRIP_RECORDS))
    assert header.metadata == metadata()
    assert header.mappings.records() == [Mapping(*r) for r in ROUND_TRIP_RECORDS]
    assert header.builds is None


def test_v3_round_trip_is_identity() -> None:
    header = round_trip_header()
    assert deserialize_header(serialize_header(header)) == header


@pytest.mark.parametrize("version", [1, 2])
def test_legacy_versions_share_the_v3_layout(version: int) -> None:
    header = deserialize_header(golden_bytes(ROUND_TRIP_RECORDS, version=version))
    assert header.metadata.version == version
    assert len(header.mappings) == 2
    assert serialize_header(header) == golden_bytes(ROUND_TRIP_RECORDS, version=version)


def test_version_high_bits_select_layout_by_low_16_bits_and_survive() -> None:
    version = (7 << 16) | 3
    data = golden_bytes(ROUND_TRIP_RECORDS, version=version)
    header = deserialize_header(data)
    assert header.metadata.version == version
    assert serialize_header(header) == data


def test_short_input_is_header_too_short() -> None:
    with pytest.raises(HeaderError, match="header too short"):
        deserialize_header(b"\x03\x00\x00")


def test_trailing_partial_record_is_rejected() -> None:
    with pytest.raises(HeaderError, match="truncated mapping record"):
        deserialize_header(golden_bytes(ROUND_TRIP_RECORDS)[:-1])


def test_zero_mappings_read_as_one_default_mapping() -> None:
    header = deserialize_header(golden_bytes([], size=8192 + 1))
    assert header.mappings.records() == [Mapping(0, 3 * 4096, BUILD, 0)]


def test_zero_block_size_is_rejected() -> None:
    data = bytearray(golden_bytes(ROUND_TRIP_RECORDS))
    data[8:16] = bytes(8)
    with pytest.raises(HeaderError, match="block size cannot be zero"):
        deserialize_header(bytes(data))


def test_misaligned_mapping_offsets_are_rejected() -> None:
    with pytest.raises(MappingError, match="not block-aligned"):
        deserialize_header(golden_bytes([(0, 4096, BUILD, 0), (4096, 4096, BASE, 100)]))


def test_unknown_version_is_rejected() -> None:
    with pytest.raises(HeaderError, match="unsupported header version 9"):
        deserialize_header(golden_bytes(ROUND_TRIP_RECORDS, version=9))


def test_v3_ignores_builds_when_writing() -> None:
    header = Header(metadata(), MappingTable.from_records([Mapping(0, 8192, NIL_UUID, 0)]), builds={})
    assert deserialize_header(serialize_header(header)).builds is None

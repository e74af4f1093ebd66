"""V4 headers: per-build data, frame tables with sparse trimming, caps and corrupt input."""

from __future__ import annotations

import struct
import uuid

import lz4.frame
import pytest

from ember.errors import HeaderError
from ember.header import (
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

SELF = uuid.UUID("c0000000-0000-4000-8000-000000000001")
MID = uuid.UUID("b0000000-0000-4000-8000-000000000002")
OLD = uuid.UUID("a0000000-0000-4000-8000-000000000003")
V3_ANCESTOR = uuid.UUID("90000000-0000-4000-8000-000000000004")
CHECKSUM = bytes(range(32))


def v4_header(mappings: list[Mapping], builds: dict[uuid.UUID, BuildData], version: int = 4) -> Header:
    size = max((m.end for m in mappings), default=8192)
    return Header(Metadata(version, 4096, size, 3, SELF, OLD), MappingTable.from_records(mappings), builds)


def framed(inner: bytes, claimed: int | None = None, version: int = 4) -> bytes:
    """A V4 header around an arbitrary inner block, for crafting corrupt input."""
    prefix = struct.pack("<QQQQ", version, 4096, 8192, 1) + SELF.bytes + OLD.bytes
    length = len(inner) if claimed is None else claimed
    return prefix + struct.pack("<BI", 0, length) + lz4.frame.compress(inner)


def test_frame_table_round_trips_and_locates_compressed_frames() -> None:
    frames = FrameTable.from_sizes(CompressionType.LZ4, [(2048, 1024), (2048, 900)])
    builds = {SELF: BuildData(12345, CHECKSUM, frames), OLD: BuildData(67890)}
    header = v4_header([Mapping(0, 4096, SELF, 0), Mapping(4096, 4096, OLD, 0)], builds)
    read = deserialize_header(serialize_header(header))
    assert read == header
    table = read.builds[SELF].frame_table if read.builds else None
    assert table is not None
    assert table.locate_compressed(0) == (0, 1024)
    assert table.locate_compressed(2048) == (1024, 900)
    assert read.builds is not None and read.builds[OLD].frame_table is None


@pytest.mark.parametrize(
    "builds",
    [
        pytest.param(
            {SELF: BuildData(4096, CHECKSUM, FrameTable.from_sizes(CompressionType.ZSTD, [(4096, 77)]))},
            id="zstd",
        ),
        pytest.param({SELF: BuildData(4096)}, id="no-frames"),
        pytest.param(
            {
                SELF: BuildData(
                    1 << 20, CHECKSUM, FrameTable.from_sizes(CompressionType.LZ4, [(4096, 100)] * 256)
                )
            },
            id="many-frames",
        ),
        pytest.param({}, id="no-builds"),
    ],
)
def test_v4_variants_round_trip(builds: dict[uuid.UUID, BuildData]) -> None:
    header = v4_header([Mapping(0, 1 << 20, SELF, 0)], builds)
    assert deserialize_header(serialize_header(header)) == header


def test_frame_tables_are_trimmed_to_referenced_ranges_on_write() -> None:
    frames = FrameTable.from_sizes(
        CompressionType.LZ4, [(4096, 2000), (4096, 3000), (4096, 2500), (4096, 1800)]
    )
    mappings = [
        Mapping(0, 4096, SELF, 0),
        Mapping(4096, 8192, NIL_UUID, 0),
        Mapping(12288, 4096, SELF, 12288),
    ]
    read = deserialize_header(
        serialize_header(v4_header(mappings, {SELF: BuildData(16384, CHECKSUM, frames)}))
    )
    assert read.builds is not None
    table = read.builds[SELF].frame_table
    assert table is not None and len(table) == 2
    assert table.locate_compressed(12288) == (7500, 1800)
    with pytest.raises(HeaderError):
        table.locate_compressed(4096)


def test_build_without_mappings_keeps_its_full_frame_table() -> None:
    frames = FrameTable.from_sizes(CompressionType.LZ4, [(4096, 10), (4096, 20)])
    header = v4_header([Mapping(0, 8192, SELF, 0)], {MID: BuildData(8192, CHECKSUM, frames)})
    read = deserialize_header(serialize_header(header))
    assert read.builds is not None and read.builds[MID].frame_table == frames


def test_uncompressed_self_entry_stays_present_and_uncompressed() -> None:
    read = deserialize_header(serialize_header(v4_header([Mapping(0, 8192, SELF, 0)], {SELF: BuildData()})))
    assert read.builds == {SELF: BuildData()}
    assert read.builds[SELF].frame_table is None


def test_mixed_chain_keeps_v4_ancestors_and_leaves_v3_ancestors_absent() -> None:
    lz4_frames = FrameTable.from_sizes(CompressionType.LZ4, [(4096, 1000)])
    builds = {
        SELF: BuildData(4096, CHECKSUM, lz4_frames),
        MID: BuildData(4096),
        OLD: BuildData(4096, CHECKSUM),
    }
    mappings = [Mapping(i * 4096, 4096, b, 0) for i, b in enumerate([SELF, MID, OLD, V3_ANCESTOR])]
    read = deserialize_header(serialize_header(v4_header(mappings, builds)))
    assert read.builds == builds
    assert V3_ANCESTOR not in read.builds


def test_builds_are_written_sorted_by_raw_uuid_bytes() -> None:
    header = v4_header(
        [Mapping(0, 8192, SELF, 0)], {SELF: BuildData(1), OLD: BuildData(2), MID: BuildData(3)}
    )
    data = serialize_header(header)
    inner = lz4.frame.decompress(data[69:])
    first_ids = [inner[4 + i * 64 : 20 + i * 64] for i in range(3)]
    assert first_ids == sorted(b.bytes for b in (SELF, OLD, MID))


def test_pending_upload_flag_is_never_written_but_is_read() -> None:
    header = Header(
        v4_header([Mapping(0, 8192, SELF, 0)], {}).metadata, MappingTable.empty(), {}, pending_upload=True
    )
    data = bytearray(serialize_header(header))
    assert data[64] == 0
    data[64] = 1
    assert deserialize_header(bytes(data)).pending_upload


def test_oversized_build_count_is_rejected() -> None:
    with pytest.raises(HeaderError, match="claims 1000 builds"):
        deserialize_header(framed(struct.pack("<I", 1000) + bytes(100)))


def test_oversized_mapping_count_is_rejected() -> None:
    with pytest.raises(HeaderError, match="claims 5 mappings"):
        deserialize_header(framed(struct.pack("<II", 0, 5) + bytes(40 * 4)))


def test_uncompressed_length_beyond_cap_is_rejected_until_the_cap_is_raised() -> None:
    header = v4_header([Mapping(i * 4096, 4096, SELF if i % 2 else OLD, 0) for i in range(100)], {})
    with pytest.raises(HeaderError, match="over the 1000-byte cap"):
        serialize_header(header, max_uncompressed_bytes=1000)
    data = serialize_header(header)
    with pytest.raises(HeaderError, match="over the 1000-byte cap"):
        deserialize_header(data, max_uncompressed_bytes=1000)
    assert deserialize_header(data, max_uncompressed_bytes=10_000) == header


def test_length_prefix_disagreeing_with_block_is_rejected() -> None:
    with pytest.raises(HeaderError, match="decompressed to"):
        deserialize_header(framed(struct.pack("<II", 0, 0), claimed=12))


def test_corrupt_lz4_stream_is_a_header_error() -> None:
    data = bytearray(serialize_header(v4_header([Mapping(0, 8192, SELF, 0)], {})))
    data[-6] ^= 0xFF
    with pytest.raises(HeaderError, match="LZ4"):
        deserialize_header(bytes(data))


def test_frames_with_no_compression_type_are_rejected() -> None:
    bad_build = SELF.bytes + struct.pack("<q", 0) + bytes(32) + struct.pack("<II", 0, 1) + bytes(24)
    with pytest.raises(HeaderError, match="no compression"):
        deserialize_header(framed(struct.pack("<I", 1) + bad_build + struct.pack("<I", 0)))


def test_zero_mappings_in_v4_read_as_default_mapping() -> None:
    header = deserialize_header(framed(struct.pack("<II", 0, 0)))
    assert header.mappings.records() == [Mapping(0, 8192, SELF, 0)]
    assert header.builds == {}

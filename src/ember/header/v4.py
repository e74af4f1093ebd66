"""Header version 4: the prefix, then an LZ4-compressed block holding per-build data and mappings.

::

    [64-byte metadata prefix]
    [u8 flags]                 bit0 = incomplete pending upload (only peers emit it; always 0 here)
    [u32 uncompressed_len]     length of the inner block (capped, 256 MiB by default)
    [LZ4 frame]                4 MB blocks, block checksum on, content checksum on

    inner block (little-endian):
    u32 build_count, then per build sorted by raw UUID bytes:
        build_id 16 B | size_bytes i64 | checksum 32 B                      (56 bytes)
        u32 compression_type | u32 frame_count | frame_count x 24-byte frame (see ``frames``)
    u32 mapping_count | mapping_count x 40-byte mapping record            (see ``layout``)

V5 (``v5``) shares the framing and the builds section. Frame tables are trimmed on write to the
frames this header's mappings read.
"""

from __future__ import annotations

import struct
import uuid
from typing import Final

import lz4.frame
import numpy as np

from ember.errors import HeaderError
from ember.header.frames import FRAME_DTYPE, MAX_FRAMES, BuildData, CompressionType, FrameTable
from ember.header.header import Header
from ember.header.layout import PREFIX_BYTES, RECORD_BYTES, pack_prefix, pack_records, unpack_records
from ember.header.model import Metadata
from ember.header.table import MappingTable

MAX_UNCOMPRESSED_HEADER_BYTES: Final = 256 * 1024 * 1024
FLAG_PENDING_UPLOAD: Final = 0x01
_OUTER: Final = struct.Struct("<BI")
_BUILD_INFO: Final = struct.Struct("<16sq32s")
_FRAME_TABLE_HEAD: Final = struct.Struct("<II")
_U32: Final = struct.Struct("<I")
_MIN_BUILD_BYTES: Final = _BUILD_INFO.size + _FRAME_TABLE_HEAD.size


class BlockReader:
    """A bounds-checked cursor over the decompressed inner block."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._position = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._position

    def take(self, count: int, what: str) -> memoryview:
        if count > self.remaining:
            raise HeaderError(
                f"header block ends inside the {what}: need {count} bytes, {self.remaining} left; "
                "the header is truncated or corrupt"
            )
        chunk = self._data[self._position : self._position + count]
        self._position += count
        return chunk

    def u32(self, what: str) -> int:
        value: int = _U32.unpack(self.take(4, what))[0]
        return value

    def rest(self) -> memoryview:
        return self._data[self._position :]


def pack_builds_section(header: Header) -> bytes:
    builds = header.builds or {}
    parts = [_U32.pack(len(builds))]
    table = header.mappings
    by_build = np.argsort(table.build_index, kind="stable")
    sorted_index = table.build_index[by_build]
    for build_id in sorted(builds, key=lambda build: build.bytes):
        data = builds[build_id]
        parts.append(_BUILD_INFO.pack(build_id.bytes, data.size_bytes, data.checksum))
        frames = data.frame_table
        if frames is None:
            parts.append(_FRAME_TABLE_HEAD.pack(CompressionType.NONE, 0))
            continue
        position = table.index_of(build_id)
        if position is not None:
            first, last = np.searchsorted(sorted_index, np.array([position, position + 1], np.uint32))
            rows = by_build[first:last]
            frames = frames.trim_to_ranges(table.storage_offsets[rows], table.lengths[rows])
        parts.append(_FRAME_TABLE_HEAD.pack(frames.compression_type, len(frames)))
        parts.append(frames.columns.tobytes())
    return b"".join(parts)


def read_builds_section(reader: BlockReader) -> dict[uuid.UUID, BuildData]:
    count = reader.u32("build count")
    if count > reader.remaining // _MIN_BUILD_BYTES:
        raise HeaderError(
            f"header claims {count} builds but only {reader.remaining} bytes remain; the header is corrupt"
        )
    builds: dict[uuid.UUID, BuildData] = {}
    for _ in range(count):
        raw_id, size_bytes, checksum = _BUILD_INFO.unpack(reader.take(_BUILD_INFO.size, "build info"))
        code, frame_count = _FRAME_TABLE_HEAD.unpack(reader.take(_FRAME_TABLE_HEAD.size, "frame table"))
        try:
            compression = CompressionType(code)
        except ValueError as exc:
            raise HeaderError(
                f"unknown compression type {code} in a frame table; the header is corrupt"
            ) from exc
        if frame_count > MAX_FRAMES or frame_count > reader.remaining // FRAME_DTYPE.itemsize:
            raise HeaderError(f"frame table claims {frame_count} frames, beyond the cap or the bytes left")
        if compression is CompressionType.NONE and frame_count:
            raise HeaderError(f"frame table has {frame_count} frames but no compression; corrupt header")
        raw_frames = reader.take(frame_count * FRAME_DTYPE.itemsize, "frames")
        frame_table = None
        if frame_count:
            frame_table = FrameTable(compression, np.frombuffer(raw_frames, dtype=FRAME_DTYPE))
        builds[uuid.UUID(bytes=raw_id)] = BuildData(size_bytes, checksum, frame_table)
    return builds


def frame_outer(header: Header, inner: bytes, max_uncompressed_bytes: int) -> bytes:
    """Prefix + flags + length + LZ4 frame around ``inner``; refuses blocks over the cap."""
    if len(inner) > max_uncompressed_bytes:
        raise HeaderError(
            f"header block is {len(inner)} bytes uncompressed, over the {max_uncompressed_bytes}-byte cap; "
            "readers would reject it: reduce fragmentation or raise the cap on both sides"
        )
    compressed: bytes = lz4.frame.compress(
        inner,
        block_size=lz4.frame.BLOCKSIZE_MAX4MB,
        block_checksum=True,
        content_checksum=True,
        compression_level=lz4.frame.COMPRESSIONLEVEL_MIN,
    )
    return pack_prefix(header.metadata) + _OUTER.pack(0, len(inner)) + compressed


def unframe_outer(data: bytes | memoryview, max_uncompressed_bytes: int) -> tuple[int, BlockReader]:
    """``(flags, reader over the inner block)`` after checking the length prefix and the cap."""
    body = memoryview(data)[PREFIX_BYTES:]
    if len(body) < _OUTER.size:
        raise HeaderError("header too short for the flags and size prefix of a V4/V5 header; it is truncated")
    flags, expected = _OUTER.unpack_from(body)
    if expected > max_uncompressed_bytes:
        raise HeaderError(
            f"header block claims {expected} bytes uncompressed, over the {max_uncompressed_bytes}-byte cap; "
            "the header is corrupt or needs a higher cap"
        )
    try:
        decompressor = lz4.frame.LZ4FrameDecompressor()
        inner: bytes = decompressor.decompress(bytes(body[_OUTER.size :]), max_length=expected + 1)
    except RuntimeError as exc:
        raise HeaderError(f"cannot LZ4-decompress the header block: {exc}; the header is corrupt") from exc
    if len(inner) != expected:
        raise HeaderError(
            f"header block decompressed to {len(inner)} bytes but its prefix says {expected}; corrupt header"
        )
    return flags, BlockReader(inner)


def serialize_v4(header: Header, max_uncompressed_bytes: int = MAX_UNCOMPRESSED_HEADER_BYTES) -> bytes:
    table = header.mappings
    inner = pack_builds_section(header) + _U32.pack(len(table)) + pack_records(table)
    return frame_outer(header, inner, max_uncompressed_bytes)


def deserialize_v4(
    metadata: Metadata, data: bytes | memoryview, max_uncompressed_bytes: int = MAX_UNCOMPRESSED_HEADER_BYTES
) -> Header:
    flags, reader = unframe_outer(data, max_uncompressed_bytes)
    builds = read_builds_section(reader)
    count = reader.u32("mapping count")
    if count > reader.remaining // RECORD_BYTES:
        raise HeaderError(
            f"header claims {count} mappings but only {reader.remaining} bytes remain; the header is corrupt"
        )
    table: MappingTable = unpack_records(reader.take(count * RECORD_BYTES, "mappings"), count)
    return Header(metadata, table, builds, pending_upload=bool(flags & FLAG_PENDING_UPLOAD))

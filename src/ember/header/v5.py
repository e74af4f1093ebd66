"""Header version 5: V4's framing and builds section with a columnar, varint mapping section.

::

    [64-byte prefix][u8 flags][u32 uncompressed_len][LZ4 frame]    same as V4
    inner block: builds section (as V4), then
        u32 M                  distinct non-nil builds (<= 65535)
        M x 16 B               build-id table, in order of first appearance
        u32 N                  non-nil, non-empty entries (<= 8 Mi)
        N x uvarint            offset deltas (first relative to 0)
        N x uvarint            lengths
        N x zigzag varint      storage offset deltas (first relative to 0, may be negative)
        N x uvarint            index into the build-id table

All four columns count 4 KiB pages whatever the header's block size. Nil ranges are not stored:
the reader rebuilds the gaps and the tail up to ceil(size / 4 KiB) pages as NIL_UUID mappings.
Varints are LEB128 (Go ``encoding/binary``); they are encoded and decoded with numpy.
"""

from __future__ import annotations

import struct
import uuid
from typing import Final

import numpy as np

from ember.errors import HeaderError
from ember.header.header import Header
from ember.header.model import NIL_UUID, PAGE_SIZE, Metadata
from ember.header.table import U64, MappingTable
from ember.header.v4 import (
    FLAG_PENDING_UPLOAD,
    MAX_UNCOMPRESSED_HEADER_BYTES,
    BlockReader,
    frame_outer,
    pack_builds_section,
    read_builds_section,
    unframe_outer,
)

MAX_BUILDS: Final = 0xFFFF
MAX_ENTRIES: Final = 8 << 20
_U32_MAX: Final = (1 << 32) - 1
_U32: Final = struct.Struct("<I")
_PAGE: Final = np.uint64(PAGE_SIZE)
_THRESHOLDS: Final = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)
_MAX_VARINT_BYTES: Final = 10


def encode_uvarints(values: U64) -> bytes:
    """LEB128 encoding of every value, concatenated."""
    if len(values) == 0:
        return b""
    widths = 1 + np.searchsorted(_THRESHOLDS, values, side="right")
    owner = np.repeat(np.arange(len(values)), widths)
    position = np.arange(len(owner)) - np.repeat(np.cumsum(widths) - widths, widths)
    chunks = (values[owner] >> (np.uint64(7) * position.astype(np.uint64))) & np.uint64(0x7F)
    more = position < widths[owner] - 1
    return (chunks.astype(np.uint8) | (more.astype(np.uint8) << 7)).tobytes()


def decode_uvarints(data: memoryview, count: int) -> tuple[U64, int]:
    """The first ``count`` LEB128 values of ``data`` and the number of bytes they used."""
    if count == 0:
        return np.zeros(0, np.uint64), 0
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw < 0x80)[:count]
    if len(ends) < count:
        raise HeaderError(
            f"mapping section ends after {len(ends)} of {count} varints; the header is truncated"
        )
    starts = np.concatenate(([0], ends[:-1] + 1))
    widths = ends - starts + 1
    too_wide = (widths > _MAX_VARINT_BYTES) | ((widths == _MAX_VARINT_BYTES) & (raw[ends] > 1))
    if np.any(too_wide):
        raise HeaderError("header mapping section has a varint overflowing 64 bits; the header is corrupt")
    used = int(ends[-1]) + 1
    position = np.arange(used) - np.repeat(starts, widths)
    parts = (raw[:used] & 0x7F).astype(np.uint64) << (np.uint64(7) * position.astype(np.uint64))
    return np.add.reduceat(parts, starts), used


def _pages(column: U64, what: str) -> U64:
    pages = column // _PAGE
    if len(pages) and int(pages.max()) > _U32_MAX:
        raise HeaderError(f"a mapping {what} is beyond {_U32_MAX} pages (16 TiB); V5 cannot store it")
    return pages


def serialize_v5(header: Header, max_uncompressed_bytes: int = MAX_UNCOMPRESSED_HEADER_BYTES) -> bytes:
    table = header.mappings
    builds = table.referenced_builds()
    if len(builds) > MAX_BUILDS:
        raise HeaderError(f"header references {len(builds)} builds, more than V5's {MAX_BUILDS}")
    nil = table.index_of(NIL_UUID)
    keep = (table.lengths != 0) & (table.build_index != (nil if nil is not None else -1))
    if int(np.count_nonzero(keep)) > MAX_ENTRIES:
        raise HeaderError(f"header has more than {MAX_ENTRIES} non-empty mappings, V5's maximum")
    offsets = _pages(table.offsets[keep], "offset")
    lengths = _pages(table.lengths[keep], "length")
    storage = _pages(table.storage_offsets[keep], "storage offset").astype(np.int64)
    translate = np.zeros(len(table.builds), dtype=np.uint64)
    for position, build in enumerate(builds):
        translate[table.builds.index(build)] = position
    offset_deltas = np.diff(offsets.astype(np.int64), prepend=0)
    if np.any(offset_deltas < 0):
        raise HeaderError("mappings are not sorted by offset; sort them before writing a V5 header")
    storage_deltas = np.diff(storage, prepend=0)
    zigzag = ((storage_deltas << 1) ^ (storage_deltas >> 63)).view(np.uint64)
    inner = b"".join(
        (
            pack_builds_section(header),
            _U32.pack(len(builds)),
            b"".join(build.bytes for build in builds),
            _U32.pack(len(offsets)),
            encode_uvarints(offset_deltas.astype(np.uint64)),
            encode_uvarints(lengths),
            encode_uvarints(zigzag),
            encode_uvarints(translate[table.build_index[keep]]),
        )
    )
    return frame_outer(header, inner, max_uncompressed_bytes)


def deserialize_v5(
    metadata: Metadata, data: bytes | memoryview, max_uncompressed_bytes: int = MAX_UNCOMPRESSED_HEADER_BYTES
) -> Header:
    flags, reader = unframe_outer(data, max_uncompressed_bytes)
    builds = read_builds_section(reader)
    table = _read_mapping_section(reader, metadata.size)
    return Header(metadata, table, builds, pending_upload=bool(flags & FLAG_PENDING_UPLOAD))


def _read_mapping_section(reader: BlockReader, size: int) -> MappingTable:
    size_pages = -(-size // PAGE_SIZE)
    if size_pages > _U32_MAX:
        raise HeaderError(f"device size {size} is beyond {_U32_MAX} pages; V5 cannot describe it")
    build_count = reader.u32("build-id table size")
    if build_count > MAX_BUILDS or build_count > reader.remaining // 16:
        raise HeaderError(f"mapping build count {build_count} exceeds the maximum or the remaining bytes")
    raw_ids = reader.take(16 * build_count, "build-id table")
    builds = [uuid.UUID(bytes=bytes(raw_ids[i : i + 16])) for i in range(0, len(raw_ids), 16)]
    count = reader.u32("mapping count")
    if count > MAX_ENTRIES or count > reader.remaining // 4:
        raise HeaderError(f"mapping count {count} exceeds the maximum {MAX_ENTRIES} or the remaining bytes")
    if count == 0:
        if size == 0:
            return MappingTable.empty()
        return MappingTable([0], [size_pages * PAGE_SIZE], [0], [0], (NIL_UUID,))
    values, _ = decode_uvarints(reader.rest(), 4 * count)
    offset_deltas, lengths, zigzag, index = np.split(values, 4)
    if np.any(offset_deltas > _U32_MAX) or np.any(lengths > _U32_MAX):
        raise HeaderError("a mapping offset delta or length exceeds uint32 pages; the header is corrupt")
    offsets = np.cumsum(offset_deltas, dtype=np.uint64)
    storage_deltas = (zigzag >> np.uint64(1)).astype(np.int64) ^ -(zigzag & np.uint64(1)).astype(np.int64)
    if np.any(np.abs(storage_deltas) > _U32_MAX):
        raise HeaderError("a mapping storage delta exceeds the uint32 page range; the header is corrupt")
    storage = np.cumsum(storage_deltas)
    if offsets[-1] > _U32_MAX or np.any(storage < 0) or np.any(storage > _U32_MAX):
        raise HeaderError(
            "a mapping offset or storage offset is beyond the uint32 page range; corrupt header"
        )
    if np.any(index >= build_count):
        raise HeaderError(f"a mapping build index is out of range ({build_count} builds); corrupt header")
    return _with_nil_gaps(offsets, lengths, storage.astype(np.uint64), index, builds, size_pages)


def _with_nil_gaps(
    offsets: U64, lengths: U64, storage: U64, index: U64, builds: list[uuid.UUID], size_pages: int
) -> MappingTable:
    """Page columns of non-nil entries -> byte table with NIL_UUID rows filling gaps and the tail."""
    ends = offsets + lengths
    previous_ends = np.concatenate((np.zeros(1, np.uint64), ends[:-1]))
    if np.any(lengths == 0):
        raise HeaderError(f"zero-length mapping at entry {int(np.argmax(lengths == 0))}; corrupt header")
    if np.any(offsets < previous_ends):
        entry = int(np.argmax(offsets < previous_ends))
        raise HeaderError(f"mapping at entry {entry} overlaps the previous one; the header is corrupt")
    if ends[-1] > size_pages:
        raise HeaderError(f"mapping ends at page {int(ends[-1])}, beyond the device's {size_pages} pages")
    gap = offsets > previous_ends
    tail = int(ends[-1]) < size_pages
    slots = np.arange(len(offsets)) + np.cumsum(gap)
    total = len(offsets) + int(np.count_nonzero(gap)) + int(tail)
    nil_index = len(builds)
    out_offsets = np.empty(total, np.uint64)
    out_lengths = np.empty(total, np.uint64)
    out_storage = np.zeros(total, np.uint64)
    out_index = np.full(total, nil_index, np.uint32)
    out_offsets[slots] = offsets
    out_lengths[slots] = lengths
    out_storage[slots] = storage
    out_index[slots] = index
    gap_slots = slots[gap] - 1
    out_offsets[gap_slots] = previous_ends[gap]
    out_lengths[gap_slots] = offsets[gap] - previous_ends[gap]
    if tail:
        out_offsets[-1], out_lengths[-1] = ends[-1], np.uint64(size_pages) - ends[-1]
    return MappingTable(
        out_offsets * _PAGE, out_lengths * _PAGE, out_storage * _PAGE, out_index, [*builds, NIL_UUID]
    )

"""Byte packing shared by every header version: the 64-byte prefix and the 40-byte mapping record.

Prefix (little-endian): ``version u64 | block_size u64 | size u64 | generation u64 |
build_id 16 B | base_build_id 16 B`` (fields explained in ``model``).

Mapping record (little-endian, V1-V4)::

    off  size  field
    0    u64   offset
    8    u64   length
    16   16 B  build_id (raw UUID bytes)
    32   u64   storage_offset

Records are decoded with ``np.frombuffer`` so a million of them never become Python objects.
"""

from __future__ import annotations

import struct
import uuid
from typing import Final

import numpy as np

from ember.errors import HeaderError
from ember.header.model import Metadata
from ember.header.table import MappingTable

PREFIX: Final = struct.Struct("<QQQQ16s16s")
PREFIX_BYTES: Final = PREFIX.size
RECORD_DTYPE: Final = np.dtype(
    [("offset", "<u8"), ("length", "<u8"), ("build_id", "V16"), ("storage_offset", "<u8")]
)
RECORD_BYTES: Final = RECORD_DTYPE.itemsize


def pack_prefix(metadata: Metadata) -> bytes:
    return PREFIX.pack(
        metadata.version,
        metadata.block_size,
        metadata.size,
        metadata.generation,
        metadata.build_id.bytes,
        metadata.base_build_id.bytes,
    )


def unpack_prefix(data: bytes | memoryview) -> Metadata:
    if len(data) < PREFIX_BYTES:
        raise HeaderError(
            f"header too short: {len(data)} bytes, but every header starts with a {PREFIX_BYTES}-byte "
            "metadata prefix; the object is truncated or is not a header"
        )
    version, block_size, size, generation, build, base = PREFIX.unpack_from(data)
    return Metadata(
        version=version,
        block_size=block_size,
        size=size,
        generation=generation,
        build_id=uuid.UUID(bytes=build),
        base_build_id=uuid.UUID(bytes=base),
    )


def pack_records(table: MappingTable) -> bytes:
    records = np.empty(len(table), dtype=RECORD_DTYPE)
    records["offset"] = table.offsets
    records["length"] = table.lengths
    records["storage_offset"] = table.storage_offsets
    if len(table):
        raw_builds = np.array([build.bytes for build in table.builds], dtype="V16")
        records["build_id"] = raw_builds[table.build_index]
    return records.tobytes()


def unpack_records(data: bytes | memoryview, count: int) -> MappingTable:
    """Decode ``count`` records from the start of ``data`` (the caller checked there are enough)."""
    records = np.frombuffer(data, dtype=RECORD_DTYPE, count=count)
    if count == 0:
        return MappingTable.empty()
    raw, first, inverse = np.unique(records["build_id"], return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), dtype=np.uint32)
    rank[order] = np.arange(len(order), dtype=np.uint32)
    builds = tuple(uuid.UUID(bytes=raw[i].tobytes()) for i in order)
    return MappingTable(
        records["offset"],
        records["length"],
        records["storage_offset"],
        rank[inverse.reshape(-1)],
        builds,
    )

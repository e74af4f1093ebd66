"""Test helpers: mapping tables written as ``(offset, length, build, storage)`` rows in block units."""

from __future__ import annotations

import uuid

from ember.header import Mapping, MappingTable


def table(rows: list[tuple[int, int, uuid.UUID, int]], unit: int = 1) -> MappingTable:
    return MappingTable.from_records(Mapping(o * unit, n * unit, b, s * unit) for o, n, b, s in rows)


def rows(mappings: MappingTable, unit: int = 1) -> list[tuple[int, int, uuid.UUID, int]]:
    return [(m.offset // unit, m.length // unit, m.build_id, m.storage_offset // unit) for m in mappings]

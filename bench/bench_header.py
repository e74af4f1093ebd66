"""Header format benchmark: parse, serialize, resolve and merge on a 1,000,000-mapping header.

The header is what thousands of pause generations leave behind: every page alternates between
builds of different generations. Each figure is printed next to a baseline measured in the same
run. ``--quick`` uses 100,000 mappings.

    python bench/bench_header.py [--quick]
"""

from __future__ import annotations

import argparse
import bisect
import struct
import time
import uuid
from collections.abc import Callable

import numpy as np

from ember.header import (
    NIL_UUID,
    PAGE_SIZE,
    DiffMetadata,
    Header,
    MappingTable,
    Metadata,
    deserialize_header,
    merge_mappings,
    serialize_header,
)

GENERATIONS = 2000


def best_of(repeats: int, action: Callable[[], object]) -> float:
    """Fastest wall time of ``repeats`` runs, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


def fragmented_table(count: int) -> MappingTable:
    """``count`` one-page mappings, page i owned by generation (i * 7919) % GENERATIONS (nil for 0)."""
    builds = (NIL_UUID, *(uuid.uuid4() for _ in range(GENERATIONS - 1)))
    pages = np.arange(count, dtype=np.uint64)
    owner = ((pages * np.uint64(7919)) % np.uint64(GENERATIONS)).astype(np.uint32)
    storage = (pages // np.uint64(GENERATIONS)) * np.uint64(PAGE_SIZE)
    storage[owner == 0] = 0
    return MappingTable(pages * np.uint64(PAGE_SIZE), np.full(count, PAGE_SIZE), storage, owner, builds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 mappings instead of 1,000,000")
    count = 100_000 if parser.parse_args().quick else 1_000_000
    rows: list[tuple[str, str, str, str]] = []

    table = fragmented_table(count)
    top = table.builds[-1]
    metadata = Metadata(3, PAGE_SIZE, count * PAGE_SIZE, GENERATIONS, top, table.builds[1])
    header = Header(metadata, table)
    v3 = serialize_header(header)
    record = struct.Struct("<QQ16sQ")

    parse = best_of(3, lambda: deserialize_header(v3))
    naive_parse = best_of(1, lambda: [row for row in record.iter_unpack(v3[64:])])
    rows.append(
        (
            f"V3 parse, {count:,} mappings",
            f"{parse:.3f} s",
            f"{naive_parse:.3f} s struct.iter_unpack",
            "< 0.5 s",
        )
    )

    serialize = best_of(3, lambda: serialize_header(header))
    records = header.mappings.records()
    naive_serialize = best_of(
        1,
        lambda: b"".join(
            record.pack(m.offset, m.length, m.build_id.bytes, m.storage_offset) for m in records
        ),
    )
    rows.append(("V3 serialize", f"{serialize:.3f} s", f"{naive_serialize:.3f} s struct.pack loop", "-"))

    rng = np.random.default_rng(7)
    queries = rng.integers(0, count, size=count, dtype=np.uint64) * np.uint64(PAGE_SIZE)
    many = best_of(3, lambda: header.resolve_many(queries))
    bare_offsets = np.array(header.mappings.offsets)
    bare = best_of(3, lambda: np.searchsorted(bare_offsets, queries, side="right"))
    rows.append(
        (
            "resolve_many",
            f"{count / many / 1e6:.1f} M/s",
            f"{count / bare / 1e6:.1f} M/s bare searchsorted",
            ">= 1 M/s",
        )
    )

    singles = [int(q) for q in queries[:50_000]]
    single = best_of(1, lambda: [header.resolve(q) for q in singles])
    offsets_list = bare_offsets.tolist()
    bisected = best_of(1, lambda: [bisect.bisect_right(offsets_list, q) for q in singles])
    rows.append(
        (
            "resolve (one call each)",
            f"{len(singles) / single / 1e3:.0f} k/s",
            f"{len(singles) / bisected / 1e3:.0f} k/s bisect on a list",
            "-",
        )
    )

    doubled = MappingTable(
        table.offsets * np.uint64(2),
        table.lengths * np.uint64(2),
        table.storage_offsets,
        table.build_index,
        table.builds,
    )
    odd_pages = np.arange(count, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    diff = MappingTable(
        odd_pages * np.uint64(PAGE_SIZE),
        np.full(count, PAGE_SIZE),
        odd_pages * np.uint64(PAGE_SIZE),
        np.zeros(count, np.uint32),
        (uuid.uuid4(),),
    )
    merge = best_of(2, lambda: merge_mappings(doubled, diff))
    as_objects = best_of(1, lambda: (doubled.records(), diff.records()))
    rows.append(
        (
            f"merge {count:,} + {count:,}",
            f"{merge:.3f} s",
            f"{as_objects:.3f} s only making the Mapping objects",
            "< 1 s",
        )
    )

    dirty = np.sort(rng.choice(count, size=count // 100, replace=False)).astype(np.uint64)
    pause = best_of(
        2, lambda: DiffMetadata(dirty, np.zeros(0, np.uint64), PAGE_SIZE).to_diff_header(header, uuid.uuid4())
    )
    rows.append(("to_diff_header (1% dirty)", f"{pause:.3f} s", "-", "-"))

    v4 = serialize_header(Header(Metadata(4, *_rest(metadata)), table, {}))
    v5 = serialize_header(Header(Metadata(5, *_rest(metadata)), table, {}))
    rows.append(
        ("V5 size vs V4", f"{len(v5):,} B", f"{len(v4):,} B V4 ({len(v4) / len(v5):.1f}x)", "V5 <= V4 / 2")
    )
    v5_parse = best_of(2, lambda: deserialize_header(v5))
    rows.append(("V5 parse", f"{v5_parse:.3f} s", f"{parse:.3f} s same header as V3", "-"))

    widths = [
        max(len(row[i]) for row in [("operation", "ember", "baseline", "target"), *rows]) for i in range(4)
    ]
    for row in [("operation", "ember", "baseline", "target"), *rows]:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def _rest(metadata: Metadata) -> tuple[int, int, int, uuid.UUID, uuid.UUID]:
    return metadata.block_size, metadata.size, metadata.generation, metadata.build_id, metadata.base_build_id


if __name__ == "__main__":
    main()

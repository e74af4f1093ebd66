"""``artifact_builds`` / ``scheduling_info``: which builds a sandbox reads, from hand-built headers."""

from __future__ import annotations

import uuid

from ember.header import NIL_UUID, PAGE_SIZE, Header, Mapping, MappingTable, Metadata
from ember.sandbox.records import SCHEDULING_BUILDS_LIMIT, artifact_builds, scheduling_info

BASE = uuid.UUID("00000000-0000-4000-8000-00000000000a")
MIDDLE = uuid.UUID("00000000-0000-4000-8000-00000000000b")
TOP = uuid.UUID("00000000-0000-4000-8000-00000000000c")
P = PAGE_SIZE


def _header(build: uuid.UUID, rows: list[tuple[int, int, uuid.UUID]], generation: int = 3) -> Header:
    """A header of ``build`` over ``BASE`` whose rows are (first page, pages, build)."""
    size = sum(pages for _, pages, _ in rows) * P
    mappings = [Mapping(first * P, pages * P, source, 0) for first, pages, source in rows]
    return Header(Metadata(3, P, size, generation, build, BASE), MappingTable.from_records(mappings))


def test_each_build_is_listed_with_the_bytes_it_supplies_most_first() -> None:
    header = _header(TOP, [(0, 2, BASE), (2, 5, MIDDLE), (7, 1, TOP), (8, 2, BASE)])
    builds = artifact_builds(header)
    assert builds.base_build_id == BASE
    assert builds.build_ids == (MIDDLE, BASE, TOP)
    assert builds.build_bytes == (5 * P, 4 * P, 1 * P)
    assert builds.dropped_builds == 0


def test_holes_are_no_build_and_equal_shares_are_ordered_by_id() -> None:
    header = _header(TOP, [(0, 3, NIL_UUID), (3, 2, TOP), (5, 2, BASE)])
    builds = artifact_builds(header)
    assert NIL_UUID not in builds.build_ids
    assert builds.build_ids == (BASE, TOP)  # 2 pages each: by id, so the order is stable
    assert builds.build_bytes == (2 * P, 2 * P)


def test_an_all_hole_device_reads_no_build() -> None:
    builds = artifact_builds(_header(TOP, [(0, 4, NIL_UUID)], generation=1))
    assert builds.build_ids == () and builds.build_bytes == ()


def test_more_builds_than_the_limit_keep_the_biggest_and_count_the_rest() -> None:
    count = SCHEDULING_BUILDS_LIMIT + 3
    sources = [uuid.UUID(int=n + 1) for n in range(count)]
    rows, first = [], 0
    for n, source in enumerate(sources):
        pages = 1 if n < 3 else 2  # the first three supply least
        rows.append((first, pages, source))
        first += pages
    builds = artifact_builds(_header(TOP, rows))
    assert len(builds.build_ids) == SCHEDULING_BUILDS_LIMIT
    assert builds.dropped_builds == 3
    assert not set(sources[:3]) & set(builds.build_ids)
    assert set(builds.build_bytes) == {2 * P}


def test_scheduling_info_covers_both_artifacts_and_a_cold_boot_has_no_memfile() -> None:
    memfile = _header(TOP, [(0, 1, TOP), (1, 3, MIDDLE)])
    rootfs = _header(TOP, [(0, 4, BASE)])
    info = scheduling_info(TOP, memfile, rootfs)
    assert info.build_id == TOP
    assert info.memfile is not None and info.memfile.build_ids == (MIDDLE, TOP)
    assert info.rootfs.build_ids == (BASE,)
    booted = scheduling_info(TOP, None, rootfs)
    assert booted.memfile is None and booted.rootfs == info.rootfs

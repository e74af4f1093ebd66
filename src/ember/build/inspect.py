"""Reports about a build's header and data object, for inspect-build and show-build-diff.

The CLI renders these records as the original's text or as JSON; the records themselves
hold everything either rendering needs, so the two cannot disagree.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import Enum

from ember.build.integrity import DataCheck, check_data_objects, data_requirements
from ember.build.metadata import parse_metadata
from ember.build.reader import BuildFile
from ember.errors import BuildError, MappingError, MetadataError, ObjectNotFound
from ember.header import NIL_UUID, Header, check_data_block_size, validate_mappings
from ember.storage import MEMFILE, BuildPaths, Storage


class Role(Enum):
    """How a build named in a header relates to the header's own build."""

    CURRENT = "current"
    PARENT = "parent"
    ANCESTOR = "ancestor"
    ZERO = "zero"


def role_of(header: Header, build_id: uuid.UUID) -> Role:
    if build_id == NIL_UUID:
        return Role.ZERO
    if build_id == header.metadata.build_id:
        return Role.CURRENT
    if build_id == header.metadata.base_build_id:
        return Role.PARENT
    return Role.ANCESTOR


@dataclass(frozen=True)
class BuildShare:
    """How much of the device one build provides."""

    build_id: uuid.UUID
    role: Role
    size_bytes: int
    mappings: int


@dataclass(frozen=True)
class HeaderReport:
    source: str
    file_name: str
    header: Header
    header_size_bytes: int | None
    shares: tuple[BuildShare, ...]
    validation_error: str | None


def inspect_header(storage: Storage, build_id: uuid.UUID | str, file_name: str) -> HeaderReport:
    """Load a build's header (or its legacy stand-in) and summarize who provides which bytes."""
    if file_name == MEMFILE and _filesystem_only(storage, build_id):
        # Else the missing memfile reads as an unfinished upload, which this build is not.
        raise BuildError(f"build {build_id} is filesystem-only: it has no memfile; inspect its -rootfs")
    device = BuildFile.open(storage, build_id, file_name)
    header_key = BuildPaths(device.build_id).header(file_name)
    header_size = storage.size(header_key) if storage.exists(header_key) else None
    return report_for(device.header, f"{storage.url}/{header_key}", file_name, header_size)


def _filesystem_only(storage: Storage, build_id: uuid.UUID | str) -> bool:
    try:
        return parse_metadata(storage.get(BuildPaths(build_id).metadata), build_id).filesystem_only
    except (ObjectNotFound, MetadataError):
        return False


def report_for(header: Header, source: str, file_name: str, header_size: int | None) -> HeaderReport:
    totals: dict[uuid.UUID, list[int]] = {}
    for mapping in header.mappings:
        entry = totals.setdefault(mapping.build_id, [0, 0])
        entry[0] += mapping.length
        entry[1] += 1
    shares = tuple(
        BuildShare(build, role_of(header, build), size, count) for build, (size, count) in totals.items()
    )
    try:
        validate_mappings(header.mappings, header.metadata.size, header.metadata.block_size)
        problem = None
    except MappingError as exc:
        problem = str(exc)
    return HeaderReport(source, file_name, header, header_size, shares, problem)


@dataclass(frozen=True)
class DataBlock:
    index: int
    offset: int
    length: int
    non_zero_bytes: int


@dataclass(frozen=True)
class DataReport:
    """A scan of the build's own packed data object (storage offsets, not device offsets), and
    whether every data object the header reads is long enough (``objects``, one per build)."""

    key: str
    block_size: int
    blocks: tuple[DataBlock, ...]
    objects: tuple[DataCheck, ...] = ()

    @property
    def empty_blocks(self) -> int:
        return sum(1 for block in self.blocks if block.non_zero_bytes == 0)

    @property
    def problems(self) -> tuple[str, ...]:
        """One sentence per data object that does not hold what the header maps to it."""
        return tuple(check.problem for check in self.objects if check.problem is not None)


def scan_data(storage: Storage, header: Header, file_name: str, start: int, end: int) -> DataReport:
    """Count non-zero bytes per block of ``{build}/{file}`` from block ``start`` to ``end`` (0 = all),
    and check every data object ``header`` reads against the bytes it needs.

    Raises ``HeaderError`` for a block size other than 4 KiB or 2 MiB: the scan reads one block
    at a time, and a corrupt header's block size (up to 2^64) would size those reads.
    """
    metadata = header.metadata
    check_data_block_size(metadata)
    block_size = metadata.block_size
    key = BuildPaths(metadata.build_id).data_object(file_name)
    object_size = storage.size(key)
    total_blocks = -(-object_size // block_size)
    last = total_blocks if end == 0 else min(end, total_blocks)
    blocks = []
    for index in range(start, last):
        offset = index * block_size
        data = storage.read_range(key, offset, block_size)
        blocks.append(DataBlock(index, offset, len(data), len(data) - data.count(0)))
    objects = check_data_objects(storage, data_requirements(storage, header, file_name))
    return DataReport(f"{storage.url}/{key}", block_size, tuple(blocks), tuple(objects))

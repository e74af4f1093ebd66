"""Scalar records of the build header: metadata prefix fields, one mapping, one resolution.

The 64-byte metadata prefix every header version starts with (all little-endian)::

    off  size  field
    0    u64   version        format = version & 0xFFFF; upper bits are carried through untouched
    8    u64   block_size     never zero
    16   u64   size           logical device size in bytes, at most 16 TiB (``MAX_DEVICE_SIZE``)
    24   u64   generation     0 for a template layer, +1 per diff layer
    32   16 B  build_id       raw RFC-4122 bytes (uuid.UUID.bytes)
    48   16 B  base_build_id  root template build of the chain

Byte packing lives in ``layout``; these records only guarantee their values fit those fields.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Final

from ember.errors import HeaderError

NIL_UUID: Final = uuid.UUID(int=0)
PAGE_SIZE: Final = 4096
HUGEPAGE_SIZE: Final = 2 * 1024 * 1024
ROOTFS_BLOCK_SIZE: Final = 4096

TEMPLATE_METADATA_VERSION: Final = 3
STRICT_VERSION: Final = 3
"""From this version on, resolving and validating are errors instead of warnings."""

LEGACY_METADATA_VERSION: Final = 1
_U64_MAX: Final = (1 << 64) - 1

MAX_DEVICE_SIZE: Final = (1 << 32) * PAGE_SIZE
"""16 TiB: the original keeps mappings in uint32 columns of 4 KiB pages (facts file 2.6), so no
build of either system is larger, and a header claiming more is corrupt. Bounding it here, where
every header is decoded, keeps anything sized from it (page trackers, recorders, grids) sane."""
DATA_BLOCK_SIZES: Final = (PAGE_SIZE, HUGEPAGE_SIZE)
"""The block sizes data is read and written in: 4 KiB pages (rootfs, small-page memfile), 2 MiB hugepages."""


def _check_u64(name: str, value: int) -> None:
    if not 0 <= value <= _U64_MAX:
        raise HeaderError(f"header field {name}={value} does not fit an unsigned 64-bit integer")


@dataclass(frozen=True, slots=True)
class Metadata:
    """The header prefix. A zero block size is rejected here so no header can ever divide by it."""

    version: int
    block_size: int
    size: int
    generation: int
    build_id: uuid.UUID
    base_build_id: uuid.UUID

    def __post_init__(self) -> None:
        for name in ("version", "block_size", "size", "generation"):
            _check_u64(name, getattr(self, name))
        if self.block_size == 0:
            raise HeaderError(
                "block size cannot be zero: the header is corrupt or was written by a broken producer"
            )
        if self.size > MAX_DEVICE_SIZE:
            raise HeaderError(
                f"header size {self.size} bytes is over the 16 TiB ({MAX_DEVICE_SIZE}-byte) limit of "
                "E2B builds: the header is corrupt or was written by a broken producer"
            )

    @property
    def format_version(self) -> int:
        """The on-disk layout selector (the low 16 bits of ``version``)."""
        return self.version & 0xFFFF

    @classmethod
    def new_template(cls, build_id: uuid.UUID, block_size: int, size: int) -> Metadata:
        """Metadata of a fresh template layer: version 3, generation 0, its own base."""
        return cls(
            version=TEMPLATE_METADATA_VERSION,
            block_size=block_size,
            size=size,
            generation=0,
            build_id=build_id,
            base_build_id=build_id,
        )

    def next_generation(self, build_id: uuid.UUID) -> Metadata:
        """Metadata of a diff layer on top of this one: everything inherited but build and generation."""
        check_next_generation(self)
        return replace(self, build_id=build_id, generation=self.generation + 1)


def check_next_generation(metadata: Metadata) -> None:
    """Refuse to number a child of a build whose generation is the last a header can count."""
    if metadata.generation >= _U64_MAX:
        raise HeaderError(
            f"build {metadata.build_id} is at generation {metadata.generation}, the last an unsigned "
            "64-bit header field can hold, so no diff build can be made on top of it: the header is "
            "corrupt; pause from another build or re-create the template"
        )


def check_data_block_size(metadata: Metadata) -> None:
    """Refuse to read data in blocks of any size but 4 KiB or 2 MiB (facts file 2.14).

    Headers with another block size still decode, so inspect-build can show them, but sizing
    reads, pages or scans from such a value would be wrong or unbounded.
    """
    if metadata.block_size not in DATA_BLOCK_SIZES:
        raise HeaderError(
            f"header of build {metadata.build_id} has block size {metadata.block_size}: ember reads data "
            f"only in blocks of {PAGE_SIZE} or {HUGEPAGE_SIZE} bytes; the header is corrupt or was "
            "written by a broken producer"
        )


@dataclass(frozen=True, slots=True)
class Mapping:
    """Device bytes ``[offset, offset+length)`` live in ``build_id``'s data at ``storage_offset``.

    ``build_id == NIL_UUID`` means the range reads as zeros and is never fetched.
    """

    offset: int
    length: int
    build_id: uuid.UUID
    storage_offset: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True, slots=True)
class Resolved:
    """Where a device offset lives: ``length`` bytes readable contiguously from ``build_id``.

    A zero ``length`` means end of device (only lenient, pre-v3 headers produce it).
    """

    build_id: uuid.UUID
    storage_offset: int
    length: int

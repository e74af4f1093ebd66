"""The in-memory header: metadata, the mapping table, and per-build data (V4/V5 only).

Resolution follows the upstream reader: the mapping for offset ``x`` is the last one whose
offset is <= ``x``. From version 3 on, out-of-range, unaligned or uncovered offsets are errors;
older headers only log a warning, as they were written before the normalization fix.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ember.errors import MappingError
from ember.header.frames import BuildData
from ember.header.model import (
    LEGACY_METADATA_VERSION,
    NIL_UUID,
    PAGE_SIZE,
    STRICT_VERSION,
    Mapping,
    Metadata,
    Resolved,
    check_next_generation,
)
from ember.header.table import U32, U64, MappingTable

_log = logging.getLogger(__name__)


def default_mappings(metadata: Metadata) -> MappingTable:
    """The single mapping a header without mappings stands for: the whole device from its own build."""
    length = -(-metadata.size // PAGE_SIZE) * PAGE_SIZE
    return MappingTable([0], [length], [0], [0], (metadata.build_id,))


@dataclass(frozen=True)
class Header:
    """A decoded build header.

    Guarantees: at least one mapping (an empty table is replaced by ``default_mappings``) and every
    offset, length and storage offset a multiple of 4 KiB. ``builds`` is None for V1-V3 headers.
    ``pending_upload`` marks a diff header whose data is not in storage yet; it is never written.
    """

    metadata: Metadata
    mappings: MappingTable
    builds: dict[uuid.UUID, BuildData] | None = None
    pending_upload: bool = False

    def __post_init__(self) -> None:
        if len(self.mappings) == 0:
            object.__setattr__(self, "mappings", default_mappings(self.metadata))
        table = self.mappings
        for name, column in (
            ("offset", table.offsets),
            ("length", table.lengths),
            ("storage offset", table.storage_offsets),
        ):
            misaligned = np.flatnonzero(column % np.uint64(PAGE_SIZE))
            if len(misaligned):
                i = int(misaligned[0])
                raise MappingError(
                    f"mapping {i} {table[i]} is not block-aligned: its {name} must be a multiple of "
                    f"{PAGE_SIZE} bytes; the header is corrupt"
                )

    @classmethod
    def legacy(cls, build_id: uuid.UUID, object_size: int, block_size: int) -> Header:
        """The header implied by a data object stored without one (pre-header builds)."""
        metadata = Metadata(
            version=LEGACY_METADATA_VERSION,
            block_size=block_size,
            size=object_size,
            generation=1,
            build_id=build_id,
            base_build_id=build_id,
        )
        return cls(metadata, MappingTable.empty())

    @property
    def strict(self) -> bool:
        return self.metadata.version >= STRICT_VERSION

    def referenced_builds(self) -> tuple[uuid.UUID, ...]:
        """Non-nil builds the mappings read from, in order of first appearance."""
        return self.mappings.referenced_builds()

    def _complain(self, message: str) -> None:
        if self.strict:
            raise MappingError(message)
        _log.warning("%s (tolerated: header version %d is lenient)", message, self.metadata.version)

    def resolve(self, offset: int) -> Resolved:
        """Where device byte ``offset`` lives and how many bytes follow it in the same build."""
        size = self.metadata.size
        if not 0 <= offset < size:
            self._complain(f"offset {offset} is out of bounds (size {size}); read inside the device")
        if offset % PAGE_SIZE:
            self._complain(f"offset {offset} is not aligned to {PAGE_SIZE}; read at page boundaries")
        table = self.mappings
        # A numpy scalar: a Python int would make numpy convert the whole column on every call.
        i = int(np.searchsorted(table.offsets, np.uint64(offset), side="right")) if offset >= 0 else 0
        if i == 0:
            raise MappingError(f"no source found for offset {offset}: the header does not map it")
        start = int(table.offsets[i - 1])
        length = int(table.lengths[i - 1])
        shift = offset - start
        if shift >= length:
            self._complain(
                f"offset {offset} is beyond the end of the mapping at {start} (ends at {start + length}): "
                "the header has a gap there"
            )
            length = shift
        return Resolved(
            build_id=table.builds[int(table.build_index[i - 1])],
            storage_offset=int(table.storage_offsets[i - 1]) + shift,
            length=length - shift,
        )

    def resolve_many(self, offsets: npt.ArrayLike) -> tuple[U32, U64, U64]:
        """Vectorized ``resolve``: ``(build_index, storage_offsets, lengths)`` columns, one row per offset.

        ``build_index`` points into ``self.mappings.builds``.
        """
        query = np.asarray(offsets)
        if query.dtype.kind == "i":
            if np.any(query < 0):
                raise MappingError("negative offsets cannot be resolved: read inside the device")
        elif query.dtype.kind != "u":
            raise MappingError(f"offsets must be an integer array, got dtype {query.dtype}")
        query = query.astype(np.uint64, copy=False)
        size = np.uint64(self.metadata.size)
        outside = np.flatnonzero(query >= size)
        if len(outside):
            self._complain(f"offset {int(query[outside[0]])} is out of bounds (size {int(size)})")
        unaligned = np.flatnonzero(query % np.uint64(PAGE_SIZE))
        if len(unaligned):
            self._complain(f"offset {int(query[unaligned[0]])} is not aligned to {PAGE_SIZE}")
        table = self.mappings
        row = np.searchsorted(table.offsets, query, side="right")
        unmapped = np.flatnonzero(row == 0)
        if len(unmapped):
            raise MappingError(f"no source found for offset {int(query[unmapped[0]])}")
        row -= 1
        shift = query - table.offsets[row]
        lengths = table.lengths[row]
        beyond = np.flatnonzero(shift >= lengths)
        if len(beyond):
            self._complain(f"offset {int(query[beyond[0]])} is beyond the end of its mapping")
        remaining = np.where(shift >= lengths, np.uint64(0), lengths - shift)
        return table.build_index[row], table.storage_offsets[row] + shift, remaining


def empty_device_header(build_id: uuid.UUID, size_bytes: int, block_size: int) -> Header:
    """The parent of a template's first layer: generation 0, every byte nil (zeros, never read).

    Pass the first layer's own build id: it becomes the base build id of the whole chain.
    """
    metadata = Metadata.new_template(build_id, block_size, size_bytes)
    return Header(metadata, MappingTable.from_records([Mapping(0, size_bytes, NIL_UUID, 0)]))


def check_can_derive(header: Header) -> None:
    """Raise ``HeaderError`` if no diff build can be made on top of ``header`` (its generation is maxed).

    Call it before a pause or any other work that ends in a diff header, so the failure comes
    before the VM is stopped, not after its memory was exported.
    """
    check_next_generation(header.metadata)

"""Turning a layer's dirty and empty block sets into the header of a new diff build.

The new header is the parent's mappings with the diff laid over them: dirty blocks map to the
new build (packed in ascending block order in its data object), empty blocks map to NIL_UUID.
Adjacent ranges are then joined, so headers stay small across thousands of generations.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from ember.errors import MappingError
from ember.header.algebra import (
    identity_mapping_from_bitmap,
    mapping_from_bitmap,
    merge_mappings,
    normalize_mappings,
    validate_mappings,
)
from ember.header.header import Header
from ember.header.model import NIL_UUID, PAGE_SIZE
from ember.header.table import MappingTable

_log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class DiffMetadata:
    """What changed in a layer: sorted block indices that are ``dirty`` or ``empty`` (all zero).

    The two sets must be disjoint: where both name a block, empty wins.
    """

    dirty: npt.NDArray[np.uint64]
    empty: npt.NDArray[np.uint64]
    block_size: int

    def __post_init__(self) -> None:
        for name in ("dirty", "empty"):
            try:
                blocks = np.asarray(getattr(self, name), dtype=np.uint64)
            except (OverflowError, ValueError, TypeError) as exc:
                raise MappingError(f"{name} block indices must be unsigned integers: {exc}") from exc
            object.__setattr__(self, name, blocks)

    def _diff_mappings(self, build_id: uuid.UUID, identity: bool) -> MappingTable:
        make_dirty = identity_mapping_from_bitmap if identity else mapping_from_bitmap
        dirty = make_dirty(build_id, self.dirty, self.block_size)
        empty = mapping_from_bitmap(NIL_UUID, self.empty, self.block_size)
        return merge_mappings(dirty, empty)

    def _build(self, parent: Header, new_build_id: uuid.UUID, new_size: int | None, identity: bool) -> Header:
        diff = self._diff_mappings(new_build_id, identity)
        merged = normalize_mappings(merge_mappings(parent.mappings, diff))
        metadata = parent.metadata.next_generation(new_build_id)
        if new_size is not None:
            metadata = replace(metadata, size=new_size)
        builds = None
        if parent.builds is not None:
            builds = {build: parent.builds[build] for build in merged.build_ids() if build in parent.builds}
        header = Header(metadata, merged, builds, pending_upload=True)
        try:
            validate_mappings(header.mappings, metadata.size, PAGE_SIZE)
        except MappingError:
            if header.strict or new_size is not None:
                raise
            _log.warning(
                "diff header for build %s does not validate (version %d)", new_build_id, metadata.version
            )
        return header

    def to_diff_header(self, parent: Header, new_build_id: uuid.UUID, new_size: int | None = None) -> Header:
        """The header of ``new_build_id`` layered on ``parent``: generation + 1, same base and version.

        With ``new_size`` the device is resized (a grown rootfs): the diff must then cover the new
        blocks and the result is validated strictly whatever the version.
        """
        return self._build(parent, new_build_id, new_size, identity=False)

    def to_provisional_diff_header(self, parent: Header, new_build_id: uuid.UUID) -> Header:
        """Like ``to_diff_header`` but dirty blocks keep storage offset == device offset.

        For a layer whose data still sits in a local full-size cache file; never upload it.
        """
        return self._build(parent, new_build_id, None, identity=True)

"""Whether a build's data objects hold every byte its header maps to them.

A header says which bytes of each build's data object it reads; the object must be at least
that long. A truncated object (an upload cut short, a copy from a truncated source) looks
like a complete build until a guest touches the missing pages, so inspect-build ``-data``
and copy-build check it up front::

    header rows of build X    storage [0, 8 KiB) [40 KiB, 48 KiB)   -> X's object needs 48 KiB
    compressed build Y        rows read frames 0 and 3              -> Y's object needs the end
                                                                       of frame 3 (start_c + size_c)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from ember.build.reader import frame_table_of
from ember.errors import HeaderError, ObjectNotFound
from ember.header import Header
from ember.storage import BuildPaths, Storage
from ember.storage.base import MAX_OBJECT_END


@dataclass(frozen=True)
class DataRequirement:
    """``key`` (the data object of ``build_id``) must hold at least ``needed_bytes`` bytes."""

    build_id: uuid.UUID
    key: str
    needed_bytes: int
    compressed: bool


@dataclass(frozen=True)
class DataCheck:
    """One requirement against the object as stored; ``size_bytes`` is None when it is missing."""

    requirement: DataRequirement
    size_bytes: int | None

    @property
    def ok(self) -> bool:
        return self.size_bytes is not None and self.size_bytes >= self.requirement.needed_bytes

    @property
    def problem(self) -> str | None:
        """What is wrong, in one sentence naming the build and the object; None when it is fine."""
        need = self.requirement
        if self.size_bytes is None:
            return (
                f"build {need.build_id}: {need.key!r} is missing, but the header reads "
                f"{need.needed_bytes} bytes of it"
            )
        if self.size_bytes < need.needed_bytes:
            return (
                f"build {need.build_id}: {need.key!r} is {self.size_bytes} bytes, but the header reads up to "
                f"byte {need.needed_bytes}: the object is truncated"
            )
        return None


def data_requirements(storage: Storage, header: Header, file_name: str) -> list[DataRequirement]:
    """How long each build's data object must be for ``header`` to read it, in header order.

    Raises ``HeaderError`` when a row's storage range ends past what any object can hold.
    """
    table = header.mappings
    limit = np.uint64(MAX_OBJECT_END)
    fits = (table.storage_offsets <= limit) & (table.lengths <= limit)  # so a sum cannot wrap past 2^64
    beyond = ~fits | (np.where(fits, table.storage_offsets + table.lengths, 0) > limit)
    if beyond.any():
        row = int(np.argmax(beyond))
        raise HeaderError(
            f"{file_name} header of build {header.metadata.build_id} maps row {table[row]} past byte "
            "2^63 - 1, beyond any object: the header is corrupt"
        )
    requirements = []
    for build in table.referenced_builds():
        rows = np.flatnonzero(table.build_index == table.index_of(build))
        storage_offsets, lengths = table.storage_offsets[rows], table.lengths[rows]
        frames = frame_table_of(storage, header, build, file_name)
        if frames is None:
            needed = int((storage_offsets + lengths).max())
            key = BuildPaths(build).data_object(file_name)
        else:
            used = frames.trim_to_ranges(storage_offsets, lengths).columns
            needed = int((used["start_c"] + used["size_c"].astype(np.int64)).max()) if len(used) else 0
            key = BuildPaths(build).data_object(file_name, int(frames.compression_type))
        requirements.append(DataRequirement(build, key, needed, frames is not None))
    return requirements


def check_data_objects(storage: Storage, requirements: list[DataRequirement]) -> list[DataCheck]:
    """Each requirement against the size of the object in ``storage``."""
    checks = []
    for requirement in requirements:
        try:
            size_bytes: int | None = storage.size(requirement.key)
        except ObjectNotFound:
            size_bytes = None
        checks.append(DataCheck(requirement, size_bytes))
    return checks

"""The columnar mapping list every header holds.

A header can carry millions of mappings, so they are kept as parallel numpy columns instead of
Python objects (about 28 bytes per entry instead of several hundred)::

    offsets          uint64   device byte offset of each mapping (sorted ascending in valid headers)
    lengths          uint64   bytes
    storage_offsets  uint64   byte offset inside the named build's data object
    build_index      uint32   position in ``builds``, a tuple of UUIDs (NIL_UUID included when used)

``builds`` may name builds no row uses; ``build_ids()`` reports only the used ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from ember.errors import MappingError
from ember.header.model import NIL_UUID, Mapping

U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]


def _frozen_column(values: npt.ArrayLike, dtype: npt.DTypeLike, name: str) -> npt.NDArray[Any]:
    try:
        column = np.array(values, dtype=dtype)
    except (OverflowError, ValueError, TypeError) as exc:
        raise MappingError(f"mapping column {name} has values that are not unsigned integers: {exc}") from exc
    if column.ndim != 1:
        raise MappingError(f"mapping column {name} must be one-dimensional, got shape {column.shape}")
    column.flags.writeable = False
    return column


class MappingTable:
    """An immutable list of mappings stored column by column.

    Guarantees: four equal-length read-only columns; every ``build_index`` names an entry of
    ``builds``. Ordering, coverage and alignment are checked by ``validate_mappings`` and ``Header``.
    """

    __slots__ = ("build_index", "builds", "lengths", "offsets", "storage_offsets")

    offsets: U64
    lengths: U64
    storage_offsets: U64
    build_index: U32
    builds: tuple[uuid.UUID, ...]

    def __init__(
        self,
        offsets: npt.ArrayLike,
        lengths: npt.ArrayLike,
        storage_offsets: npt.ArrayLike,
        build_index: npt.ArrayLike,
        builds: Iterable[uuid.UUID],
    ) -> None:
        self.offsets = _frozen_column(offsets, np.uint64, "offsets")
        self.lengths = _frozen_column(lengths, np.uint64, "lengths")
        self.storage_offsets = _frozen_column(storage_offsets, np.uint64, "storage_offsets")
        self.build_index = _frozen_column(build_index, np.uint32, "build_index")
        self.builds = tuple(builds)
        count = len(self.offsets)
        if not len(self.lengths) == len(self.storage_offsets) == len(self.build_index) == count:
            raise MappingError("mapping columns have different lengths: they must describe the same rows")
        if count and int(self.build_index.max()) >= len(self.builds):
            raise MappingError(f"a build_index points past the {len(self.builds)} known builds")

    @classmethod
    def empty(cls) -> MappingTable:
        return cls([], [], [], [], ())

    @classmethod
    def from_records(cls, records: Iterable[Mapping]) -> MappingTable:
        builds: dict[uuid.UUID, int] = {}
        offsets: list[int] = []
        lengths: list[int] = []
        storage: list[int] = []
        index: list[int] = []
        for record in records:
            offsets.append(record.offset)
            lengths.append(record.length)
            storage.append(record.storage_offset)
            index.append(builds.setdefault(record.build_id, len(builds)))
        return cls(offsets, lengths, storage, index, builds)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> Mapping:
        return Mapping(
            offset=int(self.offsets[index]),
            length=int(self.lengths[index]),
            build_id=self.builds[int(self.build_index[index])],
            storage_offset=int(self.storage_offsets[index]),
        )

    def __iter__(self) -> Iterator[Mapping]:
        builds = self.builds
        for offset, length, index, storage in zip(
            self.offsets.tolist(),
            self.lengths.tolist(),
            self.build_index.tolist(),
            self.storage_offsets.tolist(),
            strict=True,
        ):
            yield Mapping(offset, length, builds[index], storage)

    def records(self) -> list[Mapping]:
        return list(self)

    @property
    def ends(self) -> U64:
        return self.offsets + self.lengths

    def index_of(self, build_id: uuid.UUID) -> int | None:
        """Position of ``build_id`` in ``builds`` (whether or not a row uses it)."""
        try:
            return self.builds.index(build_id)
        except ValueError:
            return None

    def build_ids(self) -> tuple[uuid.UUID, ...]:
        """Distinct builds the rows use, in order of first appearance (NIL_UUID included)."""
        if len(self) == 0:
            return ()
        used, first = np.unique(self.build_index, return_index=True)
        return tuple(self.builds[int(used[i])] for i in np.argsort(first, kind="stable"))

    def referenced_builds(self) -> tuple[uuid.UUID, ...]:
        """``build_ids()`` without NIL_UUID: the builds whose data a reader fetches."""
        return tuple(build for build in self.build_ids() if build != NIL_UUID)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MappingTable):
            return NotImplemented
        if len(self) != len(other):
            return False
        if not (
            np.array_equal(self.offsets, other.offsets)
            and np.array_equal(self.lengths, other.lengths)
            and np.array_equal(self.storage_offsets, other.storage_offsets)
        ):
            return False
        position = {build: i for i, build in enumerate(self.builds)}
        translate = np.array([position.get(build, -1) for build in other.builds], dtype=np.int64)
        if len(translate) == 0:
            return len(self) == 0
        return bool(np.array_equal(self.build_index.astype(np.int64), translate[other.build_index]))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(
            f"[{m.offset},{m.length},{m.build_id},{m.storage_offset}]" for m in self.records()[:4]
        )
        more = f", ... {len(self) - 4} more" if len(self) > 4 else ""
        return f"MappingTable({shown}{more})"

"""Per-build data records of V4/V5 headers: compression frame tables and build info.

A frame table maps the uncompressed (U) address space of a build's data object onto the
compressed (C) one. Frames carry absolute offsets in both spaces, so a table stays usable
after sparse trimming removes frames nobody references. On disk (see ``v4``)::

    u32 compression_type | u32 frame_count | frame_count x 24-byte entry
    entry: start_u i64 | start_c i64 | size_u i32 | size_c i32          (little-endian)
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from ember.errors import HeaderError

MAX_FRAMES: Final = 1 << 20
CHECKSUM_BYTES: Final = 32
ZERO_CHECKSUM: Final = bytes(CHECKSUM_BYTES)
_I32_MAX: Final = (1 << 31) - 1

FRAME_DTYPE: Final = np.dtype([("start_u", "<i8"), ("start_c", "<i8"), ("size_u", "<i4"), ("size_c", "<i4")])


class CompressionType(enum.IntEnum):
    NONE = 0
    ZSTD = 1
    LZ4 = 2


@dataclass(frozen=True, slots=True)
class Frame:
    """One compressed frame: ``size_u`` bytes at ``start_u`` stored as ``size_c`` bytes at ``start_c``."""

    start_u: int
    start_c: int
    size_u: int
    size_c: int

    @property
    def end_u(self) -> int:
        return self.start_u + self.size_u

    @property
    def end_c(self) -> int:
        return self.start_c + self.size_c


class FrameTable:
    """An immutable, validated frame table.

    Guarantees: codec is not NONE, at most 1 Mi frames, sizes positive and within i32, frames sorted
    and non-overlapping in both address spaces (gaps allowed, as left by sparse trimming).
    """

    __slots__ = ("_frames", "compression_type")

    def __init__(self, compression_type: CompressionType, frames: npt.NDArray[np.void]) -> None:
        if compression_type is CompressionType.NONE:
            raise HeaderError("a frame table needs a compression type: uncompressed builds have no table")
        if len(frames) > MAX_FRAMES:
            raise HeaderError(f"frame table has {len(frames)} frames, more than the maximum {MAX_FRAMES}")
        table = np.array(frames, dtype=FRAME_DTYPE)
        _validate_frames(table)
        table.flags.writeable = False
        self.compression_type = compression_type
        self._frames = table

    @classmethod
    def from_frames(cls, compression_type: CompressionType, frames: Iterable[Frame]) -> FrameTable:
        rows = [(f.start_u, f.start_c, f.size_u, f.size_c) for f in frames]
        for row in rows:
            starts_ok = all(0 <= v < (1 << 63) for v in row[:2])
            if not starts_ok or not all(0 < v <= _I32_MAX for v in row[2:]):
                raise HeaderError(f"frame {row} is out of range: starts must be >= 0, sizes in 1..2^31-1")
        return cls(compression_type, np.array(rows, dtype=FRAME_DTYPE))

    @classmethod
    def from_sizes(
        cls,
        compression_type: CompressionType,
        sizes: Sequence[tuple[int, int]],
        start_u: int = 0,
        start_c: int = 0,
    ) -> FrameTable:
        """A dense table of consecutive frames given as ``(size_u, size_c)`` pairs."""
        frames = []
        for size_u, size_c in sizes:
            frames.append(Frame(start_u, start_c, size_u, size_c))
            start_u += size_u
            start_c += size_c
        return cls.from_frames(compression_type, frames)

    @property
    def columns(self) -> npt.NDArray[np.void]:
        """The read-only structured array in on-disk layout."""
        return self._frames

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> Frame:
        row = self._frames[index]
        return Frame(int(row["start_u"]), int(row["start_c"]), int(row["size_u"]), int(row["size_c"]))

    def frames(self) -> list[Frame]:
        return [self[i] for i in range(len(self))]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FrameTable):
            return NotImplemented
        return self.compression_type == other.compression_type and bool(
            np.array_equal(self._frames, other._frames)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FrameTable({self.compression_type.name}, {len(self)} frames)"

    def locate(self, offset_u: int) -> Frame:
        """The frame holding uncompressed byte ``offset_u``; an error if trimming removed it."""
        starts = self._frames["start_u"]
        i = int(np.searchsorted(starts, offset_u, side="right")) - 1
        if i < 0 or offset_u >= int(starts[i]) + int(self._frames["size_u"][i]):
            raise HeaderError(
                f"uncompressed offset {offset_u} is not covered by the frame table ({len(self)} frames): "
                "the header does not reference this range of the build"
            )
        return self[i]

    def locate_compressed(self, offset_u: int) -> tuple[int, int]:
        """``(start_c, size_c)`` of the frame starting exactly at ``offset_u`` (reads are frame-aligned)."""
        frame = self.locate(offset_u)
        if frame.start_u != offset_u:
            raise HeaderError(
                f"uncompressed offset {offset_u} is inside the frame starting at {frame.start_u}: "
                "compressed reads must start at a frame boundary"
            )
        return frame.start_c, frame.size_c

    def trim_to_ranges(self, starts: npt.NDArray[np.uint64], lengths: npt.NDArray[np.uint64]) -> FrameTable:
        """Only the frames overlapping some uncompressed range ``[start, start+length)``.

        No ranges at all keeps the whole table (a build the header does not read keeps its table).
        """
        if len(starts) == 0 or len(self) == 0:
            return self
        order = np.argsort(starts, kind="stable")
        range_starts = starts[order].astype(np.int64)
        range_max_ends = np.maximum.accumulate(range_starts + lengths[order].astype(np.int64))
        frame_starts = self._frames["start_u"]
        frame_ends = frame_starts + self._frames["size_u"]
        last = np.searchsorted(range_starts, frame_ends, side="left") - 1
        keep = (last >= 0) & (range_max_ends[np.maximum(last, 0)] > frame_starts)
        return FrameTable(self.compression_type, self._frames[keep])


def _validate_frames(table: npt.NDArray[np.void]) -> None:
    if len(table) == 0:
        return
    size_u = table["size_u"].astype(np.int64)
    size_c = table["size_c"].astype(np.int64)
    if np.any(size_u <= 0) or np.any(size_c <= 0):
        raise HeaderError("frame table has a frame with a non-positive size: the header is corrupt")
    if np.any(table["start_u"] < 0) or np.any(table["start_c"] < 0):
        raise HeaderError("frame table has a negative frame start: the header is corrupt")
    ends_u = table["start_u"][:-1] + size_u[:-1]
    ends_c = table["start_c"][:-1] + size_c[:-1]
    if np.any(table["start_u"][1:] < ends_u) or np.any(table["start_c"][1:] < ends_c):
        raise HeaderError("frame table frames are unsorted or overlap: the header is corrupt")


@dataclass(frozen=True, slots=True)
class BuildData:
    """What a V4/V5 header knows about one build's data object.

    ``frame_table is None`` means authoritatively uncompressed; ``size_bytes == 0`` means the size is
    unknown (ask storage); an all-zero ``checksum`` (SHA-256 of the uncompressed data) means unknown.
    """

    size_bytes: int = 0
    checksum: bytes = ZERO_CHECKSUM
    frame_table: FrameTable | None = None

    def __post_init__(self) -> None:
        if len(self.checksum) != CHECKSUM_BYTES:
            raise HeaderError(f"build checksum must be {CHECKSUM_BYTES} bytes, got {len(self.checksum)}")
        if not -(1 << 63) <= self.size_bytes < (1 << 63):
            raise HeaderError(f"build size {self.size_bytes} does not fit a signed 64-bit integer")

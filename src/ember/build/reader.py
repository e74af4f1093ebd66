"""Layered reads of a build's memfile or rootfs across its chain of diff builds.

The top build's header maps every device byte to the build that holds it (facts file 2.7,
4.2); no ancestor header is needed to read::

    device  |-- A --|-nil-|---- C ----|-- A --|-- B --|      one header, rows sorted by offset
              |             |           |       |
              v             v           v       v
            {A}/rootfs    zeros,      {C}/rootfs      {B}/rootfs.zstd  (framed: decode the
            at storage    no storage  at storage      frames covering the range)
            offset        call        offset

A read plans its segments once (one binary search over the mapping columns, then one
step per mapping row it crosses, never one per 4 KiB block; rows of one build that are
contiguous in storage become one segment). Each segment then lands directly in its slice
of the caller's buffer: nil segments are zero-filled there, stored ones are read there with
one ``read_range_into`` each, framed ones are decoded and copied there. No intermediate
buffer holds the device bytes, so ``readinto`` copies each byte once (``read_at`` allocates
the buffer and copies once more into the returned ``bytes``).

One storage call per segment is cheap on local storage and through a ``ChunkCache`` (one
``preadv`` on an open chunk file); straight against a bucket it would be one request per
segment, so put a ``ChunkCache`` in front of remote storage.

Guarantees:

* nil ranges are zero-filled without any storage call;
* a read past the device size is short; a read at or past the end returns nothing;
* a data object shorter than a mapping needs, or missing, raises ``BuildError`` naming the
  build, the object and the offsets: missing data is never served as zeros;
* a ``BuildFile`` is immutable apart from lock-guarded caches, so threads may share one.
"""

from __future__ import annotations

import bisect
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from ember.build.compressed import FramedReader
from ember.errors import BuildError, HeaderError, MappingError, ObjectNotFound
from ember.header import (
    HUGEPAGE_SIZE,
    NIL_UUID,
    ROOTFS_BLOCK_SIZE,
    FrameTable,
    Header,
    deserialize_header,
)
from ember.storage import MEMFILE, ROOTFS, BuildPaths, Storage
from ember.storage.base import writable_view

_ZEROS: Final = memoryview(bytes(4 << 20))


@dataclass(frozen=True, slots=True)
class _Source:
    """Where one build's bytes of this file live: the object key and its frame table, if framed."""

    build_id: uuid.UUID
    key: str
    frames: FrameTable | None


def _legacy_block_size(file_name: str) -> int:
    return HUGEPAGE_SIZE if file_name == MEMFILE else ROOTFS_BLOCK_SIZE


def _check_file_name(file_name: str) -> None:
    if file_name not in (MEMFILE, ROOTFS):
        raise BuildError(f"unknown build file {file_name!r}: use {MEMFILE!r} or {ROOTFS!r}")


def load_header(storage: Storage, key: str) -> Header | None:
    """The decoded header at ``key``, or None when the object does not exist."""
    try:
        data = storage.get(key)
    except ObjectNotFound:
        return None
    try:
        return deserialize_header(data)
    except (HeaderError, MappingError) as exc:
        raise HeaderError(f"{key} in {storage.url}: {exc}") from exc


def frame_table_of(storage: Storage, header: Header, build: uuid.UUID, file_name: str) -> FrameTable | None:
    """The frame table of ``build``'s data as ``header`` reads it; None means uncompressed.

    Lookup order of facts file 2.5: V1-V3 headers carry no per-build data (uncompressed); a V4+
    entry is authoritative; a build missing from a V4+ header is looked up in its own header,
    and a build without one (or without an entry for itself) is uncompressed.
    """
    if header.builds is None:
        return None
    entry = header.builds.get(build)
    if entry is not None:
        return entry.frame_table
    own = load_header(storage, BuildPaths(build).header(file_name))
    own_entry = None if own is None or own.builds is None else own.builds.get(build)
    return None if own_entry is None else own_entry.frame_table


class BuildFile:
    """One device (``memfile`` or ``rootfs.ext4``) of a build, readable at any byte offset."""

    def __init__(self, storage: Storage, build_id: uuid.UUID, file_name: str, header: Header) -> None:
        _check_file_name(file_name)
        self.header = header
        self.build_id = build_id
        self.file_name = file_name
        self._storage = storage
        self._framed = FramedReader(storage)
        table = header.mappings
        # Plain memoryviews of the columns: indexing and bisect on them cost a fraction of
        # numpy scalar access, and searchsorted with a Python int converts the whole column.
        self._offsets = _column(table.offsets)
        self._lengths = _column(table.lengths)
        self._storage_offsets = _column(table.storage_offsets)
        self._build_index = _column(table.build_index)
        self._builds = table.builds
        self._lock = threading.Lock()
        self._sources: dict[int, _Source | None] = {}

    @classmethod
    def open(cls, storage: Storage, build_id: uuid.UUID | str, file_name: str) -> BuildFile:
        """Load the build's header, or synthesize the legacy one from the data object's size.

        Raises ``BuildError`` when neither the header nor the data object exists.
        """
        _check_file_name(file_name)
        paths = BuildPaths(build_id)
        build = uuid.UUID(paths.build_id)
        header = load_header(storage, paths.header(file_name))
        if header is None:
            data_key = paths.data_object(file_name)
            try:
                object_size = storage.size(data_key)
            except ObjectNotFound as exc:
                raise BuildError(
                    f"build {build} has no {file_name} in {storage.url}: neither {paths.header(file_name)!r} "
                    f"nor {data_key!r} exists; check the build id, the -storage location, and that the "
                    "build finished uploading (its metadata.json exists)"
                ) from exc
            header = Header.legacy(build, object_size, _legacy_block_size(file_name))
        return cls(storage, build, file_name, header)

    @property
    def size(self) -> int:
        """Logical device size in bytes (header metadata)."""
        return self.header.metadata.size

    @property
    def block_size(self) -> int:
        return self.header.metadata.block_size

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``; fewer only where the device ends."""
        end = self._end_of(offset, length)
        if offset >= end:
            return b""
        buffer = bytearray(end - offset)
        self._fill(memoryview(buffer), offset)
        return bytes(buffer)

    def readinto(self, buffer: bytearray | memoryview, offset: int) -> int:
        """Fill ``buffer`` from device ``offset``; returns the bytes filled (short only at the end)."""
        view = writable_view(buffer)
        end = self._end_of(offset, len(view))
        if offset >= end:
            return 0
        self._fill(view[: end - offset], offset)
        return end - offset

    def _end_of(self, offset: int, length: int) -> int:
        if offset < 0 or length < 0:
            raise BuildError(f"invalid read offset={offset} length={length}: both must be >= 0")
        return min(offset + length, self.size)

    def _fill(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` with device bytes ``[offset, offset + len(view))``, all inside the device.

        This loop runs once per segment (dozens per 4 MiB read of a fragmented chain), so the
        common cases are spelled out inline rather than behind helper calls.
        """
        sources = self._sources
        read_into = self._storage.read_range_into
        for device_offset, length, build_index, storage_offset in self._plan(offset, offset + len(view)):
            low = device_offset - offset
            target = view[low : low + length]
            source = sources[build_index] if build_index in sources else self._source(build_index)
            if source is None:
                _zero_fill(target)
            elif source.frames is None:
                try:
                    filled = read_into(source.key, storage_offset, target)
                except ObjectNotFound as exc:
                    raise self._missing(source, device_offset) from exc
                if filled != length:
                    raise self._truncated(source, storage_offset, filled, length, device_offset)
            else:
                position = 0
                for piece in self._framed.read(source.key, source.frames, storage_offset, length):
                    target[position : position + len(piece)] = piece
                    position += len(piece)

    def _plan(self, offset: int, end: int) -> list[tuple[int, int, int, int]]:
        """``(device offset, length, build index, storage offset)`` segments covering ``[offset, end)``.

        Adjacent rows of one build that are contiguous in storage become one segment.
        """
        first = bisect.bisect_right(self._offsets, offset) - 1
        if first < 0:
            raise self._gap(offset)
        row_offset = self._offsets[first]
        if end <= row_offset + self._lengths[first]:
            # Small reads mostly land inside one row: skip the column slicing below.
            row_storage = self._storage_offsets[first] + offset - row_offset
            return [(offset, end - offset, self._build_index[first], row_storage)]
        last = bisect.bisect_left(self._offsets, end)
        rows = zip(
            self._offsets[first:last].tolist(),
            self._lengths[first:last].tolist(),
            self._build_index[first:last].tolist(),
            self._storage_offsets[first:last].tolist(),
            strict=True,
        )
        segments: list[tuple[int, int, int, int]] = []
        position = offset
        for row_offset, row_length, build_index, row_storage in rows:
            shift = position - row_offset
            take = min(row_offset + row_length, end) - position
            if shift < 0 or take <= 0:
                raise self._gap(position)
            storage_offset = row_storage + shift
            if segments:
                last_offset, last_length, last_build, last_storage = segments[-1]
                if last_build == build_index and last_storage + last_length == storage_offset:
                    segments[-1] = (last_offset, last_length + take, last_build, last_storage)
                    position += take
                    continue
            segments.append((position, take, build_index, storage_offset))
            position += take
        if position < end:
            raise self._gap(position)
        return segments

    def _gap(self, offset: int) -> MappingError:
        return MappingError(
            f"{self.file_name} header of build {self.build_id} maps no source for device offset {offset} "
            f"(size {self.size}): the header has a gap; regenerate or re-upload it"
        )

    def _source(self, build_index: int) -> _Source | None:
        """The data object of a row's build, or None for nil rows (zeros); looked up once per build."""
        if build_index in self._sources:
            return self._sources[build_index]
        build = self._builds[build_index]
        source = None
        if build != NIL_UUID:
            frames = frame_table_of(self._storage, self.header, build, self.file_name)
            compression = 0 if frames is None else int(frames.compression_type)
            source = _Source(build, BuildPaths(build).data_object(self.file_name, compression), frames)
        with self._lock:
            self._sources[build_index] = source
        return source

    def _missing(self, source: _Source, device_offset: int) -> BuildError:
        return BuildError(
            f"data object {source.key!r} of build {source.build_id} is missing from "
            f"{self._storage.url}, but build {self.build_id}'s {self.file_name} header maps device "
            f"offset {device_offset} to it; copy or re-upload build {source.build_id}"
        )

    def _truncated(
        self, source: _Source, storage_offset: int, filled: int, length: int, device_offset: int
    ) -> BuildError:
        return BuildError(
            f"data object {source.key!r} of build {source.build_id} in {self._storage.url} ends at "
            f"byte {storage_offset + filled}, but build {self.build_id}'s {self.file_name} header needs "
            f"bytes [{storage_offset}, {storage_offset + length}) for device offset {device_offset}: "
            f"the object is truncated or corrupt; re-upload build {source.build_id}"
        )


def _column(values: np.ndarray[Any, np.dtype[Any]]) -> memoryview:
    return np.ascontiguousarray(values).data


def _zero_fill(view: memoryview) -> None:
    if len(view) <= len(_ZEROS):
        view[:] = _ZEROS[: len(view)]
        return
    for start in range(0, len(view), len(_ZEROS)):
        chunk = view[start : start + len(_ZEROS)]
        chunk[:] = _ZEROS[: len(chunk)]

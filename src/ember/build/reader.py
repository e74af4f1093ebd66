"""Layered reads of a build's memfile or rootfs across its chain of diff builds.

The top build's header maps every device byte to the build that holds it (facts file 2.7,
4.2); no ancestor header is needed to read::

    device  |-- A --|-nil-|---- C ----|-- A --|-- B --|      one header, rows sorted by offset
              |             |           |       |
              v             v           v       v
            {A}/rootfs    zeros,      {C}/rootfs      {B}/rootfs.zstd  (framed: decode the
            at storage    no storage  at storage      frames covering the range)
            offset        call        offset

Two paths fill a read, and every byte lands directly in its slice of the caller's buffer
(no intermediate buffer holds the device bytes):

* The native loop (``ember.storage._mapped``), over a ``LocalStorage`` or a ``ChunkCache``:
  one C call per read walks the mapping columns itself (a binary search, then row by row),
  zero-fills nil pieces and copies stored ones from read-only maps of the data files (a
  local object mapped whole, a cached 4 MiB chunk file each), without the GIL. A fragmented
  chain crosses ~100 segments per 4 MiB, and a Python step plus a syscall per segment would
  cost several times the copy. Whatever the loop cannot serve (a chunk not cached or not
  mapped yet, a compressed build, a short object, a header gap) it hands back with how far
  it got.
* The Python path serves those pieces, one mapping row at a time, through the storage's
  ``read_range_into`` (which fetches chunks into the cache and validates them), maps the
  chunks that read brought in, and returns to the loop for the rest. It is the only
  implementation of a miss and of every error below. Other storages use it for the whole
  read: it plans the segments once (rows of one build that are contiguous in storage become
  one segment) and makes one storage call per segment, so put a ``ChunkCache`` in front of
  remote storage.

Guarantees:

* nil ranges are zero-filled without any storage call;
* a read past the device size is short; a read at or past the end returns nothing;
* a data object shorter than a mapping needs, or missing, raises ``BuildError`` naming the
  build, the object and the offsets: missing data is never served as zeros; a mapping whose
  storage range ends past 2^63 (no file offset reaches it) raises ``MappingError``;
* a ``BuildFile`` is immutable apart from lock-guarded caches, so threads may share one;
* the native loop reads only what the storage's own read path fetched and validated, and
  only through maps the storage keeps valid (``ember.storage.mapped`` explains their
  lifetime and the SIGBUS hazard of files truncated behind ember's back).
"""

from __future__ import annotations

import bisect
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

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
from ember.storage import MEMFILE, ROOTFS, BuildPaths, ChunkCache, LocalStorage, Storage
from ember.storage.base import MAX_OBJECT_END, writable_view
from ember.storage.mapped import ChunkTable, new_gather

if TYPE_CHECKING:
    from ember.storage._mapped import Gather

_ZEROS: Final = memoryview(bytes(4 << 20))
_NOT_MAPPED: Final[ChunkTable] = np.array([0, 63, 0], dtype=np.uint64)
"""The chunk table of a build nothing is mapped for yet: the native loop hands its pieces back."""


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
        self._mapped_storage = _mapped_storage(storage)
        self._gather: Gather | None = None
        self._tables: tuple[ChunkTable | None, ...] = ()
        self._whole_reads = True  # False once a framed build is seen: gather.read would miss on it
        if self._mapped_storage is not None:
            self._maps = self._mapped_storage.mapped_files().maps
            self._columns = [
                np.ascontiguousarray(column)
                for column in (table.offsets, table.lengths, table.storage_offsets, table.build_index)
            ]
            self._tables = tuple(None if build == NIL_UUID else _NOT_MAPPED for build in self._builds)
            self._gather = self._new_gather(self._tables)

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

    def local_data_files(self) -> tuple[Path | None, ...] | None:
        """Per build of ``header.mappings.builds``: the local file holding its data, None for nil.

        None overall unless every build's data is an uncompressed file of a ``LocalStorage``:
        then a reader that cannot afford ``readinto`` per page (the uffd page server's native
        loop) reads the files itself where the mapping columns point.
        """
        storage = self._storage
        if not isinstance(storage, LocalStorage):
            return None
        files: list[Path | None] = []
        for build_index in range(len(self._builds)):
            source = self._source(build_index)
            if source is None:
                files.append(None)
                continue
            path = storage.path_of(source.key)
            if source.frames is not None or not path.is_file():
                return None
            files.append(path)
        return tuple(files)

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``; fewer only where the device ends."""
        gather = self._gather
        if gather is not None and self._whole_reads and offset >= 0 and length >= 0:
            data = gather.read(offset, length)
            if data is not None:
                return data
        end = self._end_of(offset, length)
        if offset >= end:
            return b""
        buffer = bytearray(end - offset)
        self.readinto(buffer, offset)
        return bytes(buffer)

    def readinto(self, buffer: bytearray | memoryview, offset: int) -> int:
        """Fill ``buffer`` from device ``offset``; returns the bytes filled (short only at the end)."""
        gather = self._gather
        if gather is None or offset < 0:
            view = writable_view(buffer)
            end = self._end_of(offset, len(view))
            if offset >= end:
                return 0
            self._fill(view[: end - offset], offset)
            return end - offset
        try:
            result = gather.readinto(buffer, offset, 0)
        except (BufferError, TypeError):
            writable_view(buffer)  # raises the UsageError callers expect for a read-only buffer
            raise
        return result if result >= 0 else self._finish(gather, buffer, offset, -result - 1)

    def _finish(self, gather: Gather, buffer: bytearray | memoryview, offset: int, stop: int) -> int:
        """Serve a read from byte ``stop`` of ``buffer`` on, where the native loop handed it back.

        Python serves one mapping row's piece through the storage, maps the chunks that read
        brought in, and gives the rest back to the loop, until the read is done.
        """
        view = writable_view(buffer)
        end = self._end_of(offset, len(view)) - offset
        while True:
            device_offset, length, build_index, storage_offset = self._segment_at(offset + stop, offset + end)
            self._read_segment(view, offset, device_offset, length, build_index, storage_offset)
            self._map_segment(build_index, storage_offset, length)
            stop = device_offset + length - offset
            if stop >= end:
                return end
            gather = self._gather or gather  # the mapping may have brought a new table
            result = gather.readinto(view, offset, stop)
            if result >= 0:
                return result
            stop = -result - 1

    def _segment_at(self, position: int, end: int) -> tuple[int, int, int, int]:
        """The piece of the mapping row holding ``position``, up to ``end`` at most."""
        row = bisect.bisect_right(self._offsets, position) - 1
        if row < 0:
            raise self._gap(position)
        shift = position - self._offsets[row]
        if shift >= self._lengths[row]:
            raise self._gap(position)
        take = min(self._lengths[row] - shift, end - position)
        return position, take, self._build_index[row], self._storage_offsets[row] + shift

    def _map_segment(self, build_index: int, storage_offset: int, length: int) -> None:
        """Map the data a Python read just served, so the native loop serves it next time."""
        storage = self._mapped_storage
        source = self._sources.get(build_index)
        if storage is None or source is None or source.frames is not None:
            return
        table = storage.map_range(source.key, storage_offset, length)
        if table is None or table is self._tables[build_index]:
            return
        with self._lock:
            tables = list(self._tables)
            tables[build_index] = table
            self._tables = tuple(tables)
            self._gather = self._new_gather(self._tables)

    def _new_gather(self, tables: tuple[ChunkTable | None, ...]) -> Gather:
        return new_gather(self._maps, self._columns, self.size, tables)

    def _end_of(self, offset: int, length: int) -> int:
        if offset < 0 or length < 0:
            raise BuildError(f"invalid read offset={offset} length={length}: both must be >= 0")
        return min(offset + length, self.size)

    def _fill(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` with device bytes ``[offset, offset + len(view))``, all inside the device.

        The path of storages without maps: one storage call per planned segment.
        """
        for device_offset, length, build_index, storage_offset in self._plan(offset, offset + len(view)):
            self._read_segment(view, offset, device_offset, length, build_index, storage_offset)

    def _read_segment(
        self,
        view: memoryview,
        offset: int,
        device_offset: int,
        length: int,
        build_index: int,
        storage_offset: int,
    ) -> None:
        """Fill the slice of ``view`` (device ``offset`` at its start) that one segment covers."""
        low = device_offset - offset
        target = view[low : low + length]
        sources = self._sources
        source = sources[build_index] if build_index in sources else self._source(build_index)
        if source is None:
            _zero_fill(target)
            return
        if storage_offset + length > MAX_OBJECT_END:
            raise self._unaddressable(source, storage_offset, length, device_offset)
        if source.frames is None:
            try:
                filled = self._storage.read_range_into(source.key, storage_offset, target)
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
            if source is not None and source.frames is not None:
                self._whole_reads = False
        return source

    def _missing(self, source: _Source, device_offset: int) -> BuildError:
        return BuildError(
            f"data object {source.key!r} of build {source.build_id} is missing from "
            f"{self._storage.url}, but build {self.build_id}'s {self.file_name} header maps device "
            f"offset {device_offset} to it; copy or re-upload build {source.build_id}"
        )

    def _unaddressable(
        self, source: _Source, storage_offset: int, length: int, device_offset: int
    ) -> MappingError:
        return MappingError(
            f"build {self.build_id}'s {self.file_name} header maps device offset {device_offset} to bytes "
            f"[{storage_offset}, {storage_offset + length}) of {source.key!r}, past the largest offset "
            "storage can address (2^63 - 1): the header is corrupt; regenerate or re-upload it"
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


def _mapped_storage(storage: Storage) -> LocalStorage | ChunkCache | None:
    """``storage`` when the native loop may read its files: only the stock classes, since a
    subclass that overrides its reads (latency or failure injection) must see every read."""
    if type(storage) is LocalStorage or type(storage) is ChunkCache:
        return storage
    return None


def _column(values: np.ndarray[Any, np.dtype[Any]]) -> memoryview:
    return np.ascontiguousarray(values).data


def _zero_fill(view: memoryview) -> None:
    if len(view) <= len(_ZEROS):
        view[:] = _ZEROS[: len(view)]
        return
    for start in range(0, len(view), len(_ZEROS)):
        chunk = view[start : start + len(_ZEROS)]
        chunk[:] = _ZEROS[: len(chunk)]

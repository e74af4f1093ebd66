"""Read-only maps of stored files, published in per-object chunk tables for native readers.

A layered device read that crosses a hundred stored segments cannot afford a storage call
per segment. ``LocalStorage`` and ``ChunkCache`` therefore also expose their files as
memory maps: one ``ChunkTable`` per object lists the address of each mapped chunk (a local
object is one chunk, a chunk cache maps its 4 MiB chunk files), and ``BuildFile``'s native
loop (``_mapped.c``) copies straight from those addresses without the GIL. The storage's
normal read path stays in charge of everything else: a chunk is mapped only after a read
through that path has fetched and validated it, and a chunk that is not mapped sends the
native loop back to that path.

Lifetimes: a region is never unmapped while a native read may use it. Dropping a map
zeroes its table slot and hands the region to the ``MapSet``, which unmaps it once every
reader that started before the slot was zeroed has finished (``_mapped.c`` explains how).
Writes and deletes through the storage drop the maps of the keys they touch, eviction keeps
at most ``max_mapped`` regions (a clock: chunks the native loop read since the last sweep
get a second chance), and ``close`` drops them all; the storage stays usable and maps again
on demand.

SIGBUS: a mapped read of a page past the end of a file truncated after it was mapped
kills the process. Through ember that cannot happen: objects and chunk files are only ever
replaced by renaming a complete new file over the name, or unlinked, and the mapped inode
keeps its size. Truncating a stored file in place behind ember's back is what to avoid; files
on network or user-space file systems (NFS, SMB, FUSE, ...) are never mapped, because another
host can make their pages unreadable, and their reads stay on the descriptor path.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from ember.errors import StorageError, UsageError

if TYPE_CHECKING:
    from ember.storage._mapped import Gather, MapSet

try:
    from ember.storage import _mapped
except ImportError as exc:  # the extension is compiled by `make setup`
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

DEFAULT_MAX_MAPPED: Final = 1024
"""Regions kept mapped per storage: 4 GiB of chunk files, or 1024 local objects."""

ChunkTable = npt.NDArray[np.uint64]
"""``[object size, chunk shift, chunk count]`` then ``(address, referenced)`` per chunk."""

_HEADER: Final = 3
_WHOLE_OBJECT_SHIFT: Final = 63


def _require_native() -> None:
    if _IMPORT_ERROR is not None:
        raise StorageError(
            f"ember's native read loop is not built ({_IMPORT_ERROR}): run `make setup` to compile it"
        )


def new_gather(
    maps: MapSet,
    columns: Sequence[npt.NDArray[Any]],
    size: int,
    tables: Sequence[ChunkTable | None],
) -> Gather:
    """The native loop over one device: mapping columns (offsets, lengths, storage offsets,
    build index) and, per build, its chunk table or None for nil."""
    _require_native()
    offsets, lengths, storage_offsets, build_index = columns
    return _mapped.Gather(maps, offsets, lengths, storage_offsets, build_index, size, tuple(tables))


@dataclass(eq=False, slots=True)
class _Table:
    """The chunk table of one version of one object; a new version gets a new table."""

    key: str
    object_size: int
    slots: ChunkTable
    mapped: set[int]


class MappedFiles:
    """The maps of one storage instance, by object key; safe to share between threads."""

    def __init__(
        self, chunk_shift: int = _WHOLE_OBJECT_SHIFT, *, max_mapped: int = DEFAULT_MAX_MAPPED
    ) -> None:
        if max_mapped < 1:
            raise UsageError(f"max_mapped must be >= 1, got {max_mapped}: keep at least one file mapped")
        _require_native()
        self.maps: MapSet = _mapped.MapSet()
        self._shift = chunk_shift
        self._max_mapped = max_mapped
        self._lock = threading.Lock()
        self._tables: dict[str, _Table] = {}
        self._clock: OrderedDict[tuple[str, int], _Table] = OrderedDict()
        self._refused: set[str] = set()

    @property
    def hits(self) -> int:
        """Chunk pieces the native loop copied from these maps."""
        return int(self.maps.hits)

    def table(self, key: str) -> ChunkTable | None:
        """The current chunk table of ``key``, if any chunk of it was mapped."""
        with self._lock:
            table = self._tables.get(key)
            return None if table is None else table.slots

    def is_mapped(self, key: str, index: int) -> bool:
        with self._lock:
            table = self._tables.get(key)
            return table is not None and index in table.mapped

    def map_file(self, key: str, index: int, path: Path, object_size: int | None, length: int) -> None:
        """Map the file at ``path`` as chunk ``index`` of ``key`` if it is ``length`` bytes long.

        ``object_size`` None means the file is the whole object (``length`` ignored: the
        object is as long as the file). A file that is missing or of another length is left
        for the storage's read path to deal with; one that cannot be mapped at all (a
        network file system, an empty object) refuses ``key`` until it is replaced.
        """
        if key in self._refused:
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            file_size = os.fstat(fd).st_size
            if object_size is None:
                object_size = length = file_size
            if file_size != length:
                return
            if length <= 0 or not _mapped.mappable(fd):
                self._refuse(key)
                return
            self._map(key, object_size, index, fd, length)
        except OSError:
            self._refuse(key)
        finally:
            os.close(fd)

    def _refuse(self, key: str) -> None:
        with self._lock:
            self._refused.add(key)

    def _map(self, key: str, object_size: int, index: int, fd: int, length: int) -> None:
        """Publish ``length`` bytes of ``fd`` as chunk ``index``; a new ``object_size`` means a
        new version of the object, which gets a new table."""
        with self._lock:
            table = self._tables.get(key)
            if table is not None and table.object_size != object_size:
                self._drop(table)
                table = None
            if table is None:
                count = max(1, -(-object_size >> self._shift))
                slots = np.zeros(_HEADER + 2 * count, dtype=np.uint64)
                slots[:_HEADER] = (object_size, self._shift, count)
                table = self._tables[key] = _Table(key, object_size, slots, set())
            if index in table.mapped:
                return
            address = self.maps.map(fd, length)
            slot = _HEADER + 2 * index
            table.slots[slot + 1] = 1
            table.slots[slot] = address
            table.mapped.add(index)
            self._clock[(key, index)] = table
            self._evict()

    def discard_object(self, key: str) -> None:
        """Drop every map of ``key`` (it was replaced or deleted)."""
        with self._lock:
            self._refused.discard(key)
            table = self._tables.get(key)
            if table is not None:
                self._drop(table)

    def close(self) -> None:
        """Drop every map; regions still being read are unmapped when their readers finish."""
        with self._lock:
            self._refused.clear()
            for table in list(self._tables.values()):
                self._drop(table)

    def __len__(self) -> int:
        with self._lock:
            return len(self._clock)

    def _evict(self) -> None:
        """Unmap down to ``max_mapped`` regions, sparing once the chunks read since the last sweep."""
        while len(self._clock) > self._max_mapped:
            (key, index), table = next(iter(self._clock.items()))
            referenced = _HEADER + 2 * index + 1
            if table.slots[referenced]:
                table.slots[referenced] = 0
                self._clock.move_to_end((key, index))
                continue
            del self._clock[(key, index)]
            self._unmap(table, index)

    def _drop(self, table: _Table) -> None:
        del self._tables[table.key]
        for index in sorted(table.mapped):
            del self._clock[(table.key, index)]
            self._unmap(table, index)

    def _unmap(self, table: _Table, index: int) -> None:
        slot = _HEADER + 2 * index
        address = int(table.slots[slot])
        table.slots[slot] = 0
        table.mapped.discard(index)
        self.maps.retire(address)

"""A read-through chunk cache on a local (or NFS) directory, itself a ``Storage``.

On-disk layout, exactly that of the orchestrator's shared chunk cache (facts file 1.7), so
a cache directory can be shared with it or cleaned by ``clean-nfs-cache``::

    <root>/
      <build uuid>/
        memfile/                      one directory per object key {build}/{file}
          size.txt                    object size in bytes, decimal text
          000000000000-4194304.bin    chunk 0: bytes [0, 4 MiB)   name = %012d-%d.bin
          000000000001-4194304.bin    chunk 1: bytes [4 MiB, 8 MiB); the last chunk is
          ...                         shorter than its name says when the object ends
        memfile.header/
          content.bin                 whole object fetched with get()

Chunk ``i`` covers object bytes ``[i * 4 MiB, min((i + 1) * 4 MiB, size))``; the name always
carries the chunk size 4194304, not the chunk's own length.

Guarantees:

* every file is written to a temporary sibling and renamed, so readers in any thread or
  process see a whole chunk or none;
* files are created 0600 and folders 0700, like a local store's objects: chunks are guest RAM;
* a chunk file whose length is not the expected one (torn by a crash, truncated by hand)
  is deleted and fetched again;
* a chunk file truncated in place while open is noticed by its short read, and refetched
  (by the descriptor path; a mapped one would raise SIGBUS: see below and ``mapped.py``);
* concurrent requests for one chunk inside a process share one fetch from ``inner``;
* writes and deletes go to ``inner`` and drop the cached files, sizes and open descriptors
  of the keys they touch.

Objects are assumed immutable once written (builds never change), and that is what makes
the warm path cheap: a cache entry is never revalidated against ``inner``, an object's size
is read once (from ``inner`` or ``size.txt``) and then kept in memory, and up to
``max_open_files`` validated chunk files stay open, so a warm read is one ``preadv`` with no
``open`` or ``stat``. An open chunk file whose name is replaced or deleted by another
process (a refetch, ``clean-nfs-cache``) still reads the same immutable bytes.

Layered device reads (``BuildFile``) go further: once a read through this class has fetched
and validated a chunk, the chunk file is mapped (``map_range``, up to ``max_mapped`` chunks,
never on NFS or another network file system) and the native loop copies from it with no
call here; a chunk that is not mapped sends the loop back to ``read_range_into``. The
pieces it copies count as ``chunk_hits``. Mapping relies on the same rule as the open
descriptors: ember replaces and deletes chunk files by rename and unlink, never by
truncating them in place (which would make a mapped read raise SIGBUS).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import shutil
import threading
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, fields
from pathlib import Path

from ember.errors import StorageError
from ember.storage.base import (
    ObjectInfo,
    Storage,
    atomic_write,
    check_key,
    check_range,
    preadv_full,
    writable_view,
)
from ember.storage.mapped import DEFAULT_MAX_MAPPED, ChunkTable, MappedFiles
from ember.storage.open_files import DEFAULT_MAX_OPEN_FILES, OpenFile, OpenFiles

MEMORY_CHUNK_SIZE = 4 << 20
_CHUNK_SHIFT = MEMORY_CHUNK_SIZE.bit_length() - 1
SIZE_FILE = "size.txt"
CONTENT_FILE = "content.bin"

_log = logging.getLogger(__name__)


def chunk_file_name(index: int) -> str:
    """File name of chunk ``index`` (``%012d-%d.bin`` with the 4 MiB chunk size)."""
    return f"{index:012d}-{MEMORY_CHUNK_SIZE}.bin"


@dataclass(frozen=True)
class CacheStats:
    """How the cache served reads so far (printed by ``-v``)."""

    chunks_fetched: int
    chunk_hits: int
    chunks_evicted: int
    blobs_fetched: int
    blob_hits: int


class ChunkCache(Storage):
    """``inner`` with ranged reads served from 4 MiB chunk files under ``root``.

    Up to ``max_open_files`` chunk files stay open between reads, so a warm read costs one
    ``preadv`` and no ``open``/``stat``, and up to ``max_mapped`` stay mapped for layered
    reads; ``close`` (or garbage collection) closes and unmaps them.
    """

    def __init__(
        self,
        inner: Storage,
        root: Path,
        *,
        max_open_files: int = DEFAULT_MAX_OPEN_FILES,
        max_mapped: int = DEFAULT_MAX_MAPPED,
    ) -> None:
        self._inner = inner
        self._root = root.absolute()
        self._lock = threading.Lock()
        self._inflight: dict[tuple[str, int], Future[bytearray]] = {}
        self._sizes: dict[str, int] = {}
        self._counts = {field.name: 0 for field in fields(CacheStats)}
        self._files = OpenFiles(max_open_files)
        self._max_mapped = max_mapped
        self._mapped: MappedFiles | None = None
        weakref.finalize(self, self._files.close)

    @property
    def url(self) -> str:
        return self._inner.url

    @property
    def root(self) -> Path:
        return self._root

    @property
    def inner(self) -> Storage:
        """The store behind the cache: only it knows what still exists (entries are never revalidated)."""
        return self._inner

    def close(self) -> None:
        """Close and unmap the chunk files kept; the cache stays usable and reopens them on demand
        (a map still being read goes when its reader is done)."""
        self._files.close()
        if self._mapped is not None:
            self._mapped.close()

    def stats(self) -> CacheStats:
        with self._lock:
            counts = dict(self._counts)
        if self._mapped is not None:
            counts["chunk_hits"] += self._mapped.hits
        return CacheStats(**counts)

    def mapped_files(self) -> MappedFiles:
        """The chunk files mapped for native readers; made on first use (needs the compiled loop)."""
        with self._lock:
            if self._mapped is None:
                self._mapped = MappedFiles(_CHUNK_SHIFT, max_mapped=self._max_mapped)
            return self._mapped

    def map_range(self, key: str, offset: int, length: int) -> ChunkTable | None:
        """The chunk table of ``key`` with the cached chunks of ``[offset, offset + length)`` mapped.

        Called after ``read_range_into`` served that range, so its chunks were fetched; one
        that is not on disk whole (a failed cache write, a torn file) stays unmapped and is
        handled by the next read through ``read_range_into``.
        """
        mapped = self.mapped_files()
        size = self.size(key)
        for index in range(offset >> _CHUNK_SHIFT, ((min(offset + length, size) - 1) >> _CHUNK_SHIFT) + 1):
            if not mapped.is_mapped(key, index):
                path = self._dir(key) / chunk_file_name(index)
                mapped.map_file(
                    key, index, path, size, min(MEMORY_CHUNK_SIZE, size - index * MEMORY_CHUNK_SIZE)
                )
        return mapped.table(key)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _dir(self, key: str) -> Path:
        return self._root / check_key(key)

    def _store(self, path: Path, data: bytes | bytearray) -> None:
        """Write a cache file; a failure only costs a refetch later, so it is logged, not raised."""
        try:
            atomic_write(path, lambda target: target.write(data), fsync=False)
        except StorageError as exc:
            _log.warning("chunk cache write failed, serving without caching: %s", exc)

    def _invalidate(self, key: str) -> None:
        with self._lock:
            self._sizes.pop(key, None)
        self._files.discard_object(key)
        if self._mapped is not None:
            self._mapped.discard_object(key)
        shutil.rmtree(self._dir(key), ignore_errors=True)

    def size(self, key: str) -> int:
        # Sizes only ever get added for a key until it is invalidated, and a dict lookup is
        # atomic, so the hot path reads without the lock.
        known = self._sizes.get(key)
        if known is not None:
            return known
        size_path = self._dir(key) / SIZE_FILE
        try:
            size_bytes = int(size_path.read_text(encoding="ascii"))
        except (OSError, ValueError):
            size_bytes = self._inner.size(key)
            self._store(size_path, str(size_bytes).encode("ascii"))
        with self._lock:
            self._sizes[key] = size_bytes
        return size_bytes

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        if length == 0:
            return b""
        count = min(length, self.size(key) - offset)
        if count <= 0:
            return b""
        index = offset // MEMORY_CHUNK_SIZE
        if (offset + count - 1) // MEMORY_CHUNK_SIZE == index:
            data = self._pread_open(key, index, offset - index * MEMORY_CHUNK_SIZE, count)
            if data is not None:
                return data
        buffer = bytearray(count)
        self._fill(key, offset, memoryview(buffer))
        return bytes(buffer)

    def _pread_open(self, key: str, index: int, low: int, count: int) -> bytes | None:
        """A read inside one cached chunk, straight into a new bytes object (no zeroing, no copy);
        None when the chunk is not cached whole, for the general path to fetch it."""
        entry = self._files.acquire((key, index))
        if entry is None:
            chunk_start = index * MEMORY_CHUNK_SIZE
            entry = self._open_chunk(key, index, min(MEMORY_CHUNK_SIZE, self.size(key) - chunk_start))
            if entry is None:
                return None
        try:
            data = os.pread(entry.fd, count, low)
        except OSError:
            return None
        finally:
            self._files.release(entry)
        if len(data) != count:
            return None
        self._count("chunk_hits")
        return data

    def read_range_into(self, key: str, offset: int, buffer: bytearray | memoryview) -> int:
        view = writable_view(buffer)
        check_range(offset, len(view))
        if not view:
            return 0
        count = min(len(view), self.size(key) - offset)
        if count <= 0:
            return 0
        self._fill(key, offset, view if count == len(view) else view[:count])
        return count

    def _fill(self, key: str, offset: int, view: memoryview) -> None:
        """Fill ``view`` (ending at or before the object's end) from ``offset``, chunk by chunk."""
        position, end = offset, offset + len(view)
        while position < end:
            index = position // MEMORY_CHUNK_SIZE
            chunk_start = index * MEMORY_CHUNK_SIZE
            low = position - chunk_start
            high = min(end, chunk_start + MEMORY_CHUNK_SIZE)
            target = view if high - position == len(view) else view[position - offset : high - offset]
            if not self._read_open(key, index, low, target):
                expected = min(MEMORY_CHUNK_SIZE, self.size(key) - chunk_start)
                if not self._read_cached(key, index, expected, low, target):
                    data = self._fetch_chunk(key, index, expected)
                    target[:] = memoryview(data)[low : low + len(target)]
            position = high

    def _read_open(self, key: str, index: int, low: int, target: memoryview) -> bool:
        """Fill ``target`` through the chunk's open descriptor: the warm path, no open or stat."""
        entry = self._files.acquire((key, index))
        return entry is not None and self._read_entry(entry, key, index, low, target)

    def _read_cached(self, key: str, index: int, expected: int, low: int, target: memoryview) -> bool:
        """Fill ``target`` from byte ``low`` of the chunk file, opening it; False if absent or torn."""
        entry = self._open_chunk(key, index, expected)
        return entry is not None and self._read_entry(entry, key, index, low, target)

    def _read_entry(self, entry: OpenFile, key: str, index: int, low: int, target: memoryview) -> bool:
        """Fill ``target`` from the held chunk file and release it; a short or failed read means
        the file shrank after it was checked (truncated in place) or broke: drop it to refetch."""
        try:
            filled = preadv_full(entry.fd, target, low)
        except OSError as exc:
            _log.warning("chunk cache read of %s chunk %d failed, refetching: %s", key, index, exc)
            filled = -1
        finally:
            self._files.release(entry)
        if filled == len(target):
            self._count("chunk_hits")
            return True
        self._files.discard((key, index), entry)
        self._evict(self._dir(key) / chunk_file_name(index))
        return False

    def _open_chunk(self, key: str, index: int, expected: int) -> OpenFile | None:
        """The chunk file opened and held, if it exists whole; a torn one is deleted."""
        path = self._dir(key) / chunk_file_name(index)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            _log.warning("chunk cache open of %s failed, refetching: %s", path, exc)
            return None
        try:
            whole = os.fstat(fd).st_size == expected
        except OSError as exc:
            _log.warning("chunk cache stat of %s failed, refetching: %s", path, exc)
            whole = False
        if whole:
            return self._files.add((key, index), fd)
        os.close(fd)
        self._evict(path)
        return None

    def _evict(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._count("chunks_evicted")

    def _fetch_chunk(self, key: str, index: int, expected: int) -> bytearray:
        """The whole chunk, fetched from ``inner`` at most once per process at a time.

        Callers arriving while a fetch runs wait for it. The fetching thread first looks at
        the disk again: a fetch that finished between this caller's miss and its turn has
        already written the chunk, and fetching it twice would waste a round trip.
        """
        with self._lock:
            pending = self._inflight.get((key, index))
            leader = pending is None
            if pending is None:
                pending = self._inflight[(key, index)] = Future()
        if not leader:
            return pending.result()
        try:
            data = bytearray(expected)
            view = memoryview(data)
            if not self._read_cached(key, index, expected, 0, view):
                if self._inner.read_range_into(key, index * MEMORY_CHUNK_SIZE, view) != expected:
                    raise StorageError(
                        f"object {key!r} in {self.url} is shorter than the {SIZE_FILE} cached under "
                        f"{self._root}; delete that cache directory and retry"
                    )
                self._store(self._dir(key) / chunk_file_name(index), data)
                self._count("chunks_fetched")
            pending.set_result(data)
            return data
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        finally:
            with self._lock:
                del self._inflight[(key, index)]

    def get(self, key: str) -> bytes:
        content_path = self._dir(key) / CONTENT_FILE
        with contextlib.suppress(FileNotFoundError):
            data = content_path.read_bytes()
            self._count("blob_hits")
            return data
        data = self._inner.get(key)
        self._store(content_path, data)
        self._count("blobs_fetched")
        return data

    def get_to_file(self, key: str, path: Path) -> None:
        content_path = self._dir(key) / CONTENT_FILE
        try:
            with content_path.open("rb") as source:
                atomic_write(path, lambda target: shutil.copyfileobj(source, target, 1 << 20))
            self._count("blob_hits")
        except FileNotFoundError:
            self._inner.get_to_file(key, path)

    def exists(self, key: str) -> bool:
        directory = self._dir(key)
        if (directory / SIZE_FILE).is_file() or (directory / CONTENT_FILE).is_file():
            return True
        return self._inner.exists(key)

    def put(self, key: str, data: bytes) -> None:
        self._invalidate(key)
        self._inner.put(key, data)
        self._invalidate(key)

    def create_exclusive(self, key: str, data: bytes) -> None:
        self._invalidate(key)
        try:
            self._inner.create_exclusive(key, data)
        finally:
            self._invalidate(key)

    def put_file(self, key: str, path: Path) -> None:
        self._invalidate(key)
        self._inner.put_file(key, path)
        self._invalidate(key)

    def move_file(self, key: str, path: Path) -> None:
        self._invalidate(key)
        self._inner.move_file(key, path)
        self._invalidate(key)

    def list(self, prefix: str) -> list[str]:
        return self._inner.list(prefix)

    def list_objects(self, prefix: str) -> builtins.list[ObjectInfo]:
        return self._inner.list_objects(prefix)

    def delete_prefix(self, prefix: str) -> int:
        keys = self._inner.list(prefix)
        deleted = self._inner.delete_prefix(prefix)
        for key in keys:
            self._invalidate(key)
        return deleted

    def crc32c(self, key: str) -> int | None:
        return self._inner.crc32c(key)

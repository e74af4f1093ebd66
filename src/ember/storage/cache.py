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
* a chunk file whose length is not the expected one (torn by a crash, truncated by hand)
  is deleted and fetched again;
* concurrent requests for one chunk inside a process share one fetch from ``inner``;
* writes and deletes go to ``inner`` and drop the cached files of the keys they touch.

Objects are assumed immutable once written (builds never change): a cache entry is never
revalidated against ``inner``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from concurrent.futures import Future
from dataclasses import dataclass, fields
from pathlib import Path

from ember.errors import StorageError
from ember.storage.base import Storage, atomic_write, check_key, check_range

MEMORY_CHUNK_SIZE = 4 << 20
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
    """``inner`` with ranged reads served from 4 MiB chunk files under ``root``."""

    def __init__(self, inner: Storage, root: Path) -> None:
        self._inner = inner
        self._root = root.absolute()
        self._lock = threading.Lock()
        self._inflight: dict[tuple[str, int], Future[bytes]] = {}
        self._sizes: dict[str, int] = {}
        self._counts = {field.name: 0 for field in fields(CacheStats)}

    @property
    def url(self) -> str:
        return self._inner.url

    @property
    def root(self) -> Path:
        return self._root

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(**self._counts)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _dir(self, key: str) -> Path:
        return self._root / check_key(key)

    def _store(self, path: Path, data: bytes) -> None:
        """Write a cache file; a failure only costs a refetch later, so it is logged, not raised."""
        try:
            atomic_write(path, lambda target: target.write(data), fsync=False)
        except StorageError as exc:
            _log.warning("chunk cache write failed, serving without caching: %s", exc)

    def _invalidate(self, key: str) -> None:
        with self._lock:
            self._sizes.pop(key, None)
        shutil.rmtree(self._dir(key), ignore_errors=True)

    def size(self, key: str) -> int:
        with self._lock:
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
        size_bytes = self.size(key)
        end = min(offset + length, size_bytes)
        if offset >= end:
            return b""
        pieces = []
        for index in range(offset // MEMORY_CHUNK_SIZE, (end - 1) // MEMORY_CHUNK_SIZE + 1):
            chunk_start = index * MEMORY_CHUNK_SIZE
            low = max(offset, chunk_start) - chunk_start
            high = min(end, chunk_start + MEMORY_CHUNK_SIZE) - chunk_start
            pieces.append(self._chunk_slice(key, index, size_bytes, low, high))
        return b"".join(pieces)

    def _chunk_slice(self, key: str, index: int, size_bytes: int, low: int, high: int) -> bytes:
        expected = min(MEMORY_CHUNK_SIZE, size_bytes - index * MEMORY_CHUNK_SIZE)
        path = self._dir(key) / chunk_file_name(index)
        cached = self._read_cached(path, expected, low, high)
        if cached is not None:
            return cached
        return self._fetch_chunk(key, index, expected, path)[low:high]

    def _read_cached(self, path: Path, expected: int, low: int, high: int) -> bytes | None:
        """Bytes ``[low, high)`` of a cached chunk, or ``None`` (after evicting it) if absent or torn."""
        try:
            with path.open("rb") as chunk:
                if os.fstat(chunk.fileno()).st_size == expected:
                    self._count("chunk_hits")
                    return os.pread(chunk.fileno(), high - low, low)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self._count("chunks_evicted")
        except FileNotFoundError:
            pass
        except OSError as exc:
            _log.warning("chunk cache read of %s failed, refetching: %s", path, exc)
        return None

    def _fetch_chunk(self, key: str, index: int, expected: int, path: Path) -> bytes:
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
            cached = self._read_cached(path, expected, 0, expected)
            if cached is not None:
                pending.set_result(cached)
                return cached
            data = self._inner.read_range(key, index * MEMORY_CHUNK_SIZE, expected)
            if len(data) != expected:
                raise StorageError(
                    f"object {key!r} in {self.url} is shorter than the {SIZE_FILE} cached under "
                    f"{self._root}; delete that cache directory and retry"
                )
            self._store(path, data)
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

    def put_file(self, key: str, path: Path) -> None:
        self._invalidate(key)
        self._inner.put_file(key, path)
        self._invalidate(key)

    def list(self, prefix: str) -> list[str]:
        return self._inner.list(prefix)

    def delete_prefix(self, prefix: str) -> int:
        keys = self._inner.list(prefix)
        deleted = self._inner.delete_prefix(prefix)
        for key in keys:
            self._invalidate(key)
        return deleted

    def crc32c(self, key: str) -> int | None:
        return self._inner.crc32c(key)

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from ember.errors import ObjectNotFound
from ember.storage import MEMORY_CHUNK_SIZE, ChunkCache, LocalStorage, MemoryStorage
from ember.storage.base import Storage

BUILD = "5b0e6c1a-2d3f-4e5a-8b9c-0d1e2f3a4b5c"
KEY = f"{BUILD}/memfile"
CHUNK = MEMORY_CHUNK_SIZE
SIZE = 2 * CHUNK + CHUNK // 2 + 4097  # two full chunks and a partial third


class CountingStorage(MemoryStorage):
    """A memory store that counts ranged reads per (key, offset) and can hold them back."""

    def __init__(self) -> None:
        super().__init__("counting")
        self.range_reads: Counter[tuple[str, int]] = Counter()
        self.gets = 0
        self.release = threading.Event()
        self.release.set()

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        self.release.wait()
        self.range_reads[(key, offset)] += 1
        return super().read_range(key, offset, length)

    def read_range_into(self, key: str, offset: int, buffer: bytearray | memoryview) -> int:
        self.release.wait()
        self.range_reads[(key, offset)] += 1
        return super().read_range_into(key, offset, buffer)

    def get(self, key: str) -> bytes:
        self.gets += 1
        return super().get(key)


@pytest.fixture
def data() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def inner(data: bytes) -> CountingStorage:
    store = CountingStorage()
    store.put(KEY, data)
    store.put(f"{BUILD}/memfile.header", b"header bytes")
    return store


@pytest.fixture
def cache(inner: CountingStorage, tmp_path: Path) -> ChunkCache:
    return ChunkCache(inner, tmp_path / "cache")


def test_cache_files_use_the_orchestrator_layout(cache: ChunkCache, data: bytes) -> None:
    cache.read_range(KEY, 10, 20)
    cache.read_range(KEY, SIZE - 5, 5)
    cache.get(f"{BUILD}/memfile.header")
    object_dir = cache.root / BUILD / "memfile"
    assert sorted(path.name for path in object_dir.iterdir()) == [
        "000000000000-4194304.bin",
        "000000000002-4194304.bin",
        "size.txt",
    ]
    assert (object_dir / "size.txt").read_text() == str(SIZE)
    assert (object_dir / "000000000000-4194304.bin").read_bytes() == data[:CHUNK]
    assert (object_dir / "000000000002-4194304.bin").read_bytes() == data[2 * CHUNK :]
    assert sorted(path.name for path in (cache.root / BUILD / "memfile.header").iterdir()) == ["content.bin"]
    assert (cache.root / BUILD / "memfile.header" / "content.bin").read_bytes() == b"header bytes"


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (0, 1),
        (CHUNK - 1, 2),
        (CHUNK, 1),
        (CHUNK - 7, CHUNK + 14),
        (0, SIZE),
        (2 * CHUNK, SIZE - 2 * CHUNK),
        (SIZE - 3, 10),
        (SIZE, 1),
        (SIZE + CHUNK, 1),
        (5, 0),
    ],
)
def test_reads_match_the_object_cold_and_warm(
    cache: ChunkCache, data: bytes, offset: int, length: int
) -> None:
    expected = data[offset : offset + length]
    assert cache.read_range(KEY, offset, length) == expected
    assert cache.read_range(KEY, offset, length) == expected


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, 1), (CHUNK - 7, CHUNK + 14), (0, SIZE), (SIZE - 3, 10), (SIZE, 1), (5, 0)],
)
def test_read_range_into_fills_only_its_slice_cold_and_warm(
    tmp_path: Path, data: bytes, offset: int, length: int
) -> None:
    inner = CountingStorage()
    inner.put(KEY, data)
    cache = ChunkCache(inner, tmp_path / "cache")
    expected = data[offset : offset + length]
    for _ in range(2):
        buffer = bytearray(b"\xee" * (length + 20))
        assert cache.read_range_into(KEY, offset, memoryview(buffer)[10 : 10 + length]) == len(expected)
        assert buffer == b"\xee" * 10 + expected + b"\xee" * (length - len(expected) + 10)
    cache.close()


def test_counters_tell_fetches_from_hits(cache: ChunkCache, inner: CountingStorage) -> None:
    cache.read_range(KEY, 0, 100)
    assert (cache.stats().chunks_fetched, cache.stats().chunk_hits) == (1, 0)
    cache.read_range(KEY, 200, 100)
    assert (cache.stats().chunks_fetched, cache.stats().chunk_hits) == (1, 1)
    cache.read_range(KEY, CHUNK - 1, CHUNK + 2)  # chunk 0 cached, chunks 1 and 2 not
    assert (cache.stats().chunks_fetched, cache.stats().chunk_hits) == (3, 2)
    assert sum(inner.range_reads.values()) == 3
    cache.get(f"{BUILD}/memfile.header")
    cache.get(f"{BUILD}/memfile.header")
    assert (cache.stats().blobs_fetched, cache.stats().blob_hits, inner.gets) == (1, 1, 1)


def test_a_short_chunk_file_is_evicted_and_refetched(cache: ChunkCache, data: bytes) -> None:
    cache.read_range(KEY, 0, 1)
    chunk_path = cache.root / BUILD / "memfile" / "000000000000-4194304.bin"
    chunk_path.write_bytes(data[:1000])  # as if torn by a crash
    assert cache.read_range(KEY, 2000, 3000) == data[2000:5000]
    assert cache.stats().chunks_evicted == 1
    assert cache.stats().chunks_fetched == 2
    assert chunk_path.read_bytes() == data[:CHUNK]


def test_threads_reading_one_chunk_share_one_fetch(
    cache: ChunkCache, inner: CountingStorage, data: bytes
) -> None:
    inner.release.clear()
    results: dict[int, bytes] = {}
    start = threading.Barrier(16)

    def read(worker: int) -> None:
        start.wait()
        results[worker] = cache.read_range(KEY, CHUNK + worker * 1000, 5000)

    threads = [threading.Thread(target=read, args=(worker,)) for worker in range(16)]
    for thread in threads:
        thread.start()
    inner.release.set()
    for thread in threads:
        thread.join()
    assert inner.range_reads[(KEY, CHUNK)] == 1
    for worker, got in results.items():
        offset = CHUNK + worker * 1000
        assert got == data[offset : offset + 5000]


@pytest.mark.parametrize("max_open_files", [1, 128])
def test_threads_reading_everywhere_see_correct_bytes(
    inner: CountingStorage, tmp_path: Path, data: bytes, max_open_files: int
) -> None:
    # With one open file allowed, every read evicts a descriptor other threads may be using.
    cache = ChunkCache(inner, tmp_path / "cache", max_open_files=max_open_files)
    failures: list[int] = []

    def read(worker: int) -> None:
        for step in range(40):
            offset = (worker * 7919 + step * 1_048_573) % SIZE
            if cache.read_range(KEY, offset, 300_000) != data[offset : offset + 300_000]:
                failures.append(offset)

    threads = [threading.Thread(target=read, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert cache.stats().chunks_fetched == 3
    cache.close()


_CHILD = """
import hashlib, sys
from pathlib import Path
from ember.storage import ChunkCache, LocalStorage
source, cache_root, key, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cache = ChunkCache(LocalStorage(Path(source)), Path(cache_root))
digest = hashlib.sha256()
offset = 0
while offset < size:
    piece = cache.read_range(key, offset, 777_777)
    digest.update(piece)
    offset += len(piece)
print(digest.hexdigest())
"""


def test_two_processes_sharing_a_cache_read_correct_bytes(tmp_path: Path, data: bytes) -> None:
    source = LocalStorage(tmp_path / "source")
    source.put(KEY, data)
    cache_root = tmp_path / "shared-cache"
    args = [sys.executable, "-c", _CHILD, str(source.root), str(cache_root), KEY, str(SIZE)]
    children = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [child.communicate(timeout=120)[0].strip() for child in children]
    assert [child.returncode for child in children] == [0, 0]
    assert outputs == [hashlib.sha256(data).hexdigest()] * 2
    chunk_files = sorted(path.name for path in (cache_root / BUILD / "memfile").glob("*.bin"))
    assert chunk_files == [f"{index:012d}-4194304.bin" for index in range(3)]


def test_puts_and_deletes_through_the_cache_drop_stale_chunks(cache: ChunkCache, inner: Storage) -> None:
    cache.read_range(KEY, 0, 10)
    cache.put(KEY, b"new content")
    assert cache.read_range(KEY, 0, 100) == b"new content"
    assert cache.size(KEY) == len(b"new content")
    assert cache.delete_prefix(f"{BUILD}/") == 2
    assert not (cache.root / BUILD / "memfile").exists()
    with pytest.raises(ObjectNotFound):
        cache.read_range(KEY, 0, 1)
    assert inner.list("") == []


def test_get_to_file_serves_a_cached_blob(cache: ChunkCache, inner: CountingStorage, tmp_path: Path) -> None:
    cache.get(f"{BUILD}/memfile.header")
    cache.get_to_file(f"{BUILD}/memfile.header", tmp_path / "out" / "header")
    assert (tmp_path / "out" / "header").read_bytes() == b"header bytes"
    assert inner.gets == 1


def _open_descriptors_of(directory: Path) -> int:
    """How many descriptors of this process point at files under ``directory``."""
    count = 0
    for link in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if Path(os.readlink(link)).is_relative_to(directory):
                count += 1
    return count


def test_warm_reads_keep_chunk_files_open_and_close_releases_them(cache: ChunkCache, data: bytes) -> None:
    for offset in (0, CHUNK, 5, CHUNK + 5, 20):  # fetches write chunks 0 and 1; warm reads open them
        cache.read_range(KEY, offset, 10)
    assert _open_descriptors_of(cache.root) == 2
    cache.close()
    assert _open_descriptors_of(cache.root) == 0
    assert cache.read_range(KEY, 20, 10) == data[20:30]


def test_open_chunk_files_are_bounded_and_the_least_recent_is_closed(
    inner: CountingStorage, tmp_path: Path, data: bytes
) -> None:
    cache = ChunkCache(inner, tmp_path / "cache", max_open_files=2)
    for index in range(3):
        cache.read_range(KEY, index * CHUNK, 10)
        cache.read_range(KEY, index * CHUNK + 10, 10)
    assert _open_descriptors_of(cache.root) == 2
    cache.close()


def test_an_open_chunk_keeps_serving_after_its_file_is_cleaned(cache: ChunkCache, data: bytes) -> None:
    cache.read_range(KEY, 0, 10)
    cache.read_range(KEY, 10, 10)  # opens the chunk file written by the fetch
    (cache.root / BUILD / "memfile" / "000000000000-4194304.bin").unlink()  # as clean-nfs-cache does
    assert cache.read_range(KEY, 100, 50) == data[100:150]
    assert cache.stats().chunks_fetched == 1


def test_a_known_object_size_is_not_read_again(cache: ChunkCache, data: bytes) -> None:
    cache.read_range(KEY, 0, 10)
    (cache.root / BUILD / "memfile" / "size.txt").write_text("7")
    assert cache.size(KEY) == SIZE
    assert cache.read_range(KEY, SIZE - 20, 100) == data[-20:]


def test_a_chunk_truncated_in_place_while_open_is_refetched(cache: ChunkCache, data: bytes) -> None:
    cache.read_range(KEY, 0, 1)
    cache.read_range(KEY, 1, 1)  # the chunk file is now open
    chunk_path = cache.root / BUILD / "memfile" / "000000000000-4194304.bin"
    with chunk_path.open("r+b") as chunk:
        chunk.truncate(1000)
    assert cache.read_range(KEY, 2000, 3000) == data[2000:5000]
    assert (cache.stats().chunks_evicted, cache.stats().chunks_fetched) == (1, 2)
    assert chunk_path.read_bytes() == data[:CHUNK]

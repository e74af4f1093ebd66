"""Chunk cache read cost next to a plain local file read, measured in the same run.

    python bench/bench_storage.py [--quick]

Baseline: LocalStorage.read_range (one open + pread per call) on the source object.
Ours: ChunkCache over that LocalStorage, cold (every chunk fetched and written) and warm
(every read served from chunk files), for random 4 KiB reads and sequential 4 MiB reads.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ember.storage import MEMORY_CHUNK_SIZE, ChunkCache, LocalStorage
from ember.storage.base import Storage

KEY = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d/memfile"
PAGE = 4096


def _timed(action: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    moved = action()
    return time.perf_counter() - started, moved


def _random_pages(storage: Storage, offsets: list[int]) -> int:
    return sum(len(storage.read_range(KEY, offset, PAGE)) for offset in offsets)


def _sequential(storage: Storage, size_bytes: int) -> int:
    return sum(
        len(storage.read_range(KEY, offset, MEMORY_CHUNK_SIZE))
        for offset in range(0, size_bytes, MEMORY_CHUNK_SIZE)
    )


def _report(label: str, seconds: float, moved: int, reads: int) -> None:
    print(f"  {label:<34} {reads / seconds:>10,.0f} reads/s {moved / seconds / 1e6:>9,.0f} MB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 MiB object, 2k random reads")
    args = parser.parse_args()
    size_bytes = (16 if args.quick else 256) << 20
    reads = 2_000 if args.quick else 50_000
    rng = random.Random(1)
    offsets = [rng.randrange(0, size_bytes // PAGE) * PAGE for _ in range(reads)]
    with tempfile.TemporaryDirectory() as scratch:
        source = LocalStorage(Path(scratch) / "source")
        source.put(KEY, os.urandom(size_bytes))
        print(
            f"object {size_bytes >> 20} MiB, {reads} random 4 KiB reads, chunk {MEMORY_CHUNK_SIZE >> 20} MiB"
        )

        print("sequential 4 MiB reads")
        seconds, moved = _timed(lambda: _sequential(source, size_bytes))
        _report("baseline LocalStorage", seconds, moved, size_bytes // MEMORY_CHUNK_SIZE)
        cold = ChunkCache(source, Path(scratch) / "cache-seq")
        seconds, moved = _timed(lambda: _sequential(cold, size_bytes))
        _report("ChunkCache cold (fetch + write)", seconds, moved, size_bytes // MEMORY_CHUNK_SIZE)
        seconds, moved = _timed(lambda: _sequential(cold, size_bytes))
        _report("ChunkCache warm", seconds, moved, size_bytes // MEMORY_CHUNK_SIZE)

        print("random 4 KiB reads")
        seconds, moved = _timed(lambda: _random_pages(source, offsets))
        _report("baseline LocalStorage", seconds, moved, reads)
        cache = ChunkCache(source, Path(scratch) / "cache-random")
        seconds, moved = _timed(lambda: _random_pages(cache, offsets))
        _report("ChunkCache cold start (fills)", seconds, moved, reads)
        seconds, moved = _timed(lambda: _random_pages(cache, offsets))
        _report("ChunkCache warm", seconds, moved, reads)
        stats = cache.stats()
        print(f"  cache counters: fetched {stats.chunks_fetched} chunks, {stats.chunk_hits} hits")


if __name__ == "__main__":
    main()

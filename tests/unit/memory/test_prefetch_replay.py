"""Prefetch replay and storage failures under the FUSE memory file.

A prefetcher loads pages through the file, so the kernel keeps them; a "guest" (a child
process mapping the file, as QEMU does) then reads them without a FUSE request. Storage
failures are retried a bounded number of times, then reach the reader as EIO and are kept
for the owner to report.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ember.build import BuildFile
from ember.errors import StorageUnreachable
from ember.header import PAGE_SIZE, serialize_header
from ember.memory import Extent, LazyMemory, LazyMemoryError, Prefetcher, coalesce, export_memory
from ember.storage import MEMFILE, BuildPaths, MemoryStorage

pytestmark = pytest.mark.root

SIZE = 4 << 20
FAST_RETRIES = (0.001, 0.001, 0.001)

TOUCH = r"""
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ)
m.madvise(mmap.MADV_RANDOM)
print(sum(m[int(offset)] for offset in sys.argv[2:]))
"""


class FlakyStorage(MemoryStorage):
    """Fails the first ``failures`` ranged reads of memfile data (all of them when negative)."""

    def __init__(self, failures: int) -> None:
        super().__init__("prefetch-test")
        self.failures = failures
        self.attempts = 0

    def read_range_into(self, key: str, offset: int, buffer: bytearray | memoryview) -> int:
        if key.endswith(MEMFILE):
            self.attempts += 1
            if self.failures < 0 or self.attempts <= self.failures:
                raise StorageUnreachable(self.url, "injected read failure")
        return super().read_range_into(key, offset, buffer)


@pytest.fixture(autouse=True)
def _need_fuse() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount FUSE file systems")
    if shutil.which("fusermount3") is None or not Path("/dev/fuse").exists():
        pytest.skip("needs /dev/fuse and fusermount3 (Debian package fuse3)")


def _build(tmp_path: Path, storage: MemoryStorage) -> tuple[BuildFile, bytes]:
    ram = np.random.default_rng(5).integers(1, 256, SIZE, dtype=np.uint8).tobytes()
    (tmp_path / "ram").write_bytes(ram)
    build = uuid.uuid4()
    header = export_memory(tmp_path / "ram", SIZE, PAGE_SIZE, build, tmp_path / "data")
    paths = BuildPaths(build)
    storage.put(paths.header(MEMFILE), serialize_header(header))
    storage.put(paths.data_object(MEMFILE), (tmp_path / "data").read_bytes())
    return BuildFile.open(storage, build, MEMFILE), ram


@pytest.fixture
def memory(tmp_path: Path) -> Iterator[tuple[LazyMemory, bytes]]:
    base, ram = _build(tmp_path, MemoryStorage("prefetch-test"))
    with LazyMemory(base, tmp_path, read_retry_delays_s=FAST_RETRIES) as lazy:
        yield lazy, ram


def touch(path: Path, offsets: list[int]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", TOUCH, str(path), *map(str, offsets)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_pages_loaded_by_the_prefetcher_never_reach_fuse_when_the_guest_touches_them(
    memory: tuple[LazyMemory, bytes],
) -> None:
    lazy, _ = memory
    pages = list(range(40, 60)) + list(range(3, 10))
    with Prefetcher(lazy, coalesce(pages, PAGE_SIZE)) as prefetcher:
        assert prefetcher.wait(30)
        assert prefetcher.stats().bytes_loaded == len(pages) * PAGE_SIZE
    before = lazy.stats()
    assert before.pages_prefetched == len(pages)
    touch(lazy.path, [page * PAGE_SIZE for page in pages])
    assert lazy.stats().reads == before.reads
    touch(lazy.path, [200 * PAGE_SIZE])  # not prefetched: one FUSE read
    assert lazy.stats().reads == before.reads + 1
    assert lazy.stats().pages_reread == 0


def test_the_recording_lists_prefetched_and_guest_pages_in_first_access_order(
    memory: tuple[LazyMemory, bytes],
) -> None:
    lazy, _ = memory
    with Prefetcher(lazy, [Extent(7 * PAGE_SIZE, 2 * PAGE_SIZE)]) as prefetcher:
        assert prefetcher.wait(30)
    touch(lazy.path, [100 * PAGE_SIZE, 8 * PAGE_SIZE])
    accesses = lazy.accesses()
    assert accesses.indices.tolist() == [7, 8, 100]
    assert bytes(accesses.kinds) == b"ppr"


def test_a_prefetcher_closed_early_stops_handing_out_extents(memory: tuple[LazyMemory, bytes]) -> None:
    lazy, _ = memory
    extents = [Extent(page * PAGE_SIZE, PAGE_SIZE) for page in range(SIZE // PAGE_SIZE)]
    prefetcher = Prefetcher(lazy, extents, workers=1)
    prefetcher.close()
    assert prefetcher.stats().extents_done < len(extents)
    assert prefetcher.stats().failure is None


def test_a_storage_read_that_fails_briefly_is_retried_and_served(tmp_path: Path) -> None:
    storage = FlakyStorage(failures=2)
    base, ram = _build(tmp_path, storage)
    with LazyMemory(base, tmp_path, read_retry_delays_s=FAST_RETRIES) as lazy:
        fd = os.open(lazy.path, os.O_RDONLY)  # a syscall, not a fault: safe from the serving process
        try:
            assert os.pread(fd, PAGE_SIZE, 5 * PAGE_SIZE) == ram[5 * PAGE_SIZE : 6 * PAGE_SIZE]
        finally:
            os.close(fd)
        assert lazy.stats().base_read_retries == 2
        lazy.raise_if_failed()


def test_a_storage_read_that_keeps_failing_is_eio_and_reported(tmp_path: Path) -> None:
    storage = FlakyStorage(failures=-1)
    base, _ = _build(tmp_path, storage)
    with LazyMemory(base, tmp_path, read_retry_delays_s=FAST_RETRIES) as lazy:
        lazy.raise_if_failed()
        fd = os.open(lazy.path, os.O_RDONLY)
        try:
            with pytest.raises(OSError) as failed:
                os.pread(fd, PAGE_SIZE, 5 * PAGE_SIZE)
        finally:
            os.close(fd)
        assert failed.value.errno == errno.EIO
        assert lazy.stats().base_read_retries >= len(FAST_RETRIES)
        with pytest.raises(LazyMemoryError, match="injected read failure"):
            lazy.raise_if_failed()


def test_a_prefetch_that_cannot_read_storage_stops_without_failing_the_owner(tmp_path: Path) -> None:
    storage = FlakyStorage(failures=-1)
    base, _ = _build(tmp_path, storage)
    with LazyMemory(base, tmp_path, read_retry_delays_s=FAST_RETRIES) as lazy:
        with Prefetcher(lazy, coalesce(range(64), PAGE_SIZE), source=base) as prefetcher:
            assert prefetcher.wait(30)
        stats = prefetcher.stats()
        assert stats.failure is not None and "injected read failure" in stats.failure
        assert stats.extents_done == 0

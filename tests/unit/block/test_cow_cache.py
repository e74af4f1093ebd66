from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

import ember.block.cache as cache_module
from ember.block import CowCache
from ember.errors import StorageError, UsageError

BLOCK = 4096


def allocated_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@pytest.fixture
def cache(tmp_path: Path) -> CowCache:
    return CowCache.create(tmp_path, "rootfs-sbx1", 64 * BLOCK)


def test_a_new_cache_is_a_sparse_uniquely_named_file_of_the_device_size(tmp_path: Path) -> None:
    first = CowCache.create(tmp_path, "rootfs-sbx1", 256 * BLOCK)
    second = CowCache.create(tmp_path, "rootfs-sbx1", 256 * BLOCK)
    assert first.path != second.path
    for cache in (first, second):
        assert cache.path.parent == tmp_path
        assert cache.path.name.startswith("rootfs-sbx1-") and cache.path.name.endswith(".cow")
        assert cache.path.stat().st_size == 256 * BLOCK
        assert allocated_bytes(cache.path) == 0
        assert cache.block_count == 256


def test_written_bytes_read_back_and_holes_read_as_zeros(cache: CowCache) -> None:
    payload = os.urandom(3 * BLOCK)
    cache.write(payload, 5 * BLOCK)
    buffer = bytearray(5 * BLOCK)
    assert cache.readinto(buffer, 4 * BLOCK) == 5 * BLOCK
    assert bytes(buffer) == bytes(BLOCK) + payload + bytes(BLOCK)


def test_reads_are_short_only_at_the_end_of_the_file(cache: CowCache) -> None:
    buffer = bytearray(2 * BLOCK)
    assert cache.readinto(buffer, 63 * BLOCK) == BLOCK


def test_punching_frees_the_disk_blocks_and_keeps_the_size(cache: CowCache) -> None:
    cache.write(b"\x5a" * (32 * BLOCK), 0)
    cache.sync()
    before = allocated_bytes(cache.path)
    assert before >= 32 * BLOCK
    cache.punch(0, 32 * BLOCK)
    assert allocated_bytes(cache.path) < before
    assert allocated_bytes(cache.path) == 0
    assert cache.path.stat().st_size == 64 * BLOCK
    buffer = bytearray(32 * BLOCK)
    cache.readinto(buffer, 0)
    assert bytes(buffer) == bytes(32 * BLOCK)


def test_without_hole_punching_support_the_range_is_overwritten_with_zeros(
    cache: CowCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []

    def unsupported(fd: int, mode: int, offset: int, length: int) -> int:
        calls.append((offset, length))
        ctypes.set_errno(errno.EOPNOTSUPP)
        return -1

    monkeypatch.setattr(cache_module, "_fallocate", unsupported)
    cache.write(b"\x77" * (4 * BLOCK), 0)
    cache.punch(BLOCK, 2 * BLOCK)
    cache.punch(3 * BLOCK, BLOCK)
    buffer = bytearray(4 * BLOCK)
    cache.readinto(buffer, 0)
    assert bytes(buffer) == b"\x77" * BLOCK + bytes(3 * BLOCK)
    assert calls == [(BLOCK, 2 * BLOCK)], "after one refusal the cache stops asking the kernel"


def test_a_failing_punch_is_reported_as_a_storage_error(
    cache: CowCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(fd: int, mode: int, offset: int, length: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(cache_module, "_fallocate", failing)
    with pytest.raises(StorageError, match="cannot punch"):
        cache.punch(0, BLOCK)


def test_close_removes_the_file_and_can_be_repeated(cache: CowCache) -> None:
    cache.write(b"x" * BLOCK, 0)
    cache.close()
    assert not cache.path.exists()
    cache.close()
    with pytest.raises(UsageError, match="closed"):
        cache.write(b"x", 0)
    with pytest.raises(UsageError, match="closed"):
        cache.fileno()


def test_a_missing_directory_is_reported_as_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot create a cache file"):
        CowCache.create(tmp_path / "missing", "rootfs-sbx1", BLOCK)


def test_a_size_that_is_not_whole_blocks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="multiple"):
        CowCache.create(tmp_path, "rootfs-sbx1", BLOCK + 1)
    assert list(tmp_path.iterdir()) == []

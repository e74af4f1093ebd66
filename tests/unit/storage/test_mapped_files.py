"""Maps of stored files (``ember.storage.mapped``): what gets mapped, what drops a map, the bounds."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import pytest

from ember.errors import UsageError
from ember.storage import MEMORY_CHUNK_SIZE, ChunkCache, LocalStorage
from ember.storage import _mapped as native
from ember.storage.mapped import ChunkTable, MappedFiles

BUILD = "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
KEY = f"{BUILD}/memfile"
HEADER = native.TABLE_HEADER


def chunk_bytes(table: ChunkTable, index: int, length: int) -> bytes:
    """What the native loop would copy: ``length`` bytes at the address the table publishes."""
    address = int(table[HEADER + 2 * index])
    assert address != 0, f"chunk {index} is not mapped"
    return ctypes.string_at(address, length)


def test_a_local_object_is_mapped_whole_and_reads_as_the_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    data = os.urandom(100_000)
    storage.put(KEY, data)
    table = storage.map_range(KEY, 5, 10)
    assert table is not None
    assert table[:HEADER].tolist() == [len(data), 63, 1]
    assert chunk_bytes(table, 0, len(data)) == data
    assert storage.map_range(KEY, 0, 1) is table


def test_a_put_through_the_storage_drops_the_old_map_and_the_next_one_sees_the_new_object(
    tmp_path: Path,
) -> None:
    storage = LocalStorage(tmp_path)
    storage.put(KEY, b"a" * 5000)
    old = storage.map_range(KEY, 0, 1)
    assert old is not None
    storage.put(KEY, b"b" * 3000)
    assert int(old[HEADER]) == 0  # the old table no longer publishes an address
    assert storage.mapped_files().maps.pending == 0
    new = storage.map_range(KEY, 0, 1)
    assert new is not None and new is not old
    assert chunk_bytes(new, 0, 3000) == b"b" * 3000


def test_an_empty_object_is_not_mapped_until_it_is_replaced(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put(KEY, b"")
    assert storage.map_range(KEY, 0, 1) is None
    storage.put(KEY, b"x" * 10)
    table = storage.map_range(KEY, 0, 1)
    assert table is not None
    assert chunk_bytes(table, 0, 10) == b"x" * 10


def test_a_missing_object_is_not_mapped(tmp_path: Path) -> None:
    assert LocalStorage(tmp_path).map_range(KEY, 0, 1) is None


def test_local_maps_stay_within_max_mapped(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, max_mapped=2)
    tables = []
    for build in range(5):
        key = f"{BUILD[:-1]}{build}/rootfs.ext4"
        storage.put(key, bytes([build]) * 4096)
        tables.append(storage.map_range(key, 0, 1))
    assert len(storage.mapped_files()) == 2
    maps = storage.mapped_files().maps
    assert (maps.mapped, maps.pending) == (2, 0)
    assert [int(table[HEADER]) != 0 for table in tables if table is not None] == [False] * 3 + [True] * 2


def test_the_cache_maps_only_the_chunks_it_holds_whole(tmp_path: Path) -> None:
    inner = LocalStorage(tmp_path / "inner")
    data = os.urandom(2 * MEMORY_CHUNK_SIZE + 777)
    inner.put(KEY, data)
    cache = ChunkCache(inner, tmp_path / "cache")
    cache.read_range(KEY, 10, 10)  # fetches chunk 0 only
    table = cache.map_range(KEY, 0, 3 * MEMORY_CHUNK_SIZE)
    assert table is not None
    assert table[:HEADER].tolist() == [len(data), 22, 3]
    assert chunk_bytes(table, 0, MEMORY_CHUNK_SIZE) == data[:MEMORY_CHUNK_SIZE]
    assert int(table[HEADER + 2]) == int(table[HEADER + 4]) == 0

    cache.read_range(KEY, 2 * MEMORY_CHUNK_SIZE, 10)  # the short last chunk
    torn = cache.root / BUILD / "memfile" / "000000000001-4194304.bin"
    torn.write_bytes(b"torn")
    table = cache.map_range(KEY, 0, len(data))
    assert table is not None
    assert int(table[HEADER + 2]) == 0
    assert chunk_bytes(table, 2, 777) == data[2 * MEMORY_CHUNK_SIZE :]


def test_closing_the_cache_unmaps_everything_and_it_maps_again_on_demand(tmp_path: Path) -> None:
    inner = LocalStorage(tmp_path / "inner")
    inner.put(KEY, b"z" * 9000)
    cache = ChunkCache(inner, tmp_path / "cache")
    cache.read_range(KEY, 0, 10)
    table = cache.map_range(KEY, 0, 10)
    assert table is not None
    cache.close()
    maps = cache.mapped_files().maps
    assert (maps.mapped, maps.pending, int(table[HEADER])) == (0, 0, 0)
    again = cache.map_range(KEY, 0, 10)
    assert again is not None
    assert chunk_bytes(again, 0, 9000) == b"z" * 9000


def test_a_directory_or_a_zero_limit_is_refused(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert native.mappable(fd) is False
    finally:
        os.close(fd)
    with pytest.raises(UsageError, match="max_mapped"):
        MappedFiles(max_mapped=0)


def test_a_regular_local_file_is_mappable(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"1")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert native.mappable(fd) is True
    finally:
        os.close(fd)


def test_the_native_loop_rejects_tables_and_columns_it_cannot_trust() -> None:
    maps = native.MapSet()
    column = np.zeros(2, dtype=np.uint64)
    index = np.zeros(2, dtype=np.uint32)
    with pytest.raises(ValueError, match="chunk table"):
        native.Gather(maps, column, column, column, index, 10, (np.array([5, 22, 9], dtype=np.uint64),))
    with pytest.raises(ValueError, match="build index"):
        native.Gather(maps, column, column, column, index + 1, 10, (None,))
    with pytest.raises(TypeError, match="unsigned"):
        native.Gather(maps, column.astype(np.float64), column, column, index, 10, (None,))
    with pytest.raises(ValueError, match="did not map"):
        maps.retire(12345)

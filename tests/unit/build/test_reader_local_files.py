"""``BuildFile.local_data_files``: the files a fast reader may read directly, only when all are plain."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from build_chains import FRAGMENTED_LAYERS, Chain, make_chain

from ember.build.reader import BuildFile
from ember.header import NIL_UUID, CompressionType
from ember.storage import LocalStorage, MemoryStorage


@pytest.fixture
def chain() -> Chain:
    return make_chain(FRAGMENTED_LAYERS, block_size=4096, size=48 * 4096)


def _pread(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def test_a_local_uncompressed_chain_names_each_builds_data_file_and_none_for_nil(
    tmp_path: Path, chain: Chain
) -> None:
    storage = LocalStorage(tmp_path)
    chain.store(storage)
    device = BuildFile.open(storage, chain.top, "rootfs.ext4")
    files = device.local_data_files()
    assert files is not None
    builds = device.header.mappings.builds
    assert files == tuple(None if b == NIL_UUID else tmp_path / str(b) / "rootfs.ext4" for b in builds)
    image = bytearray()
    for mapping in device.header.mappings.records():
        path = files[builds.index(mapping.build_id)]
        image += (
            bytes(mapping.length) if path is None else _pread(path, mapping.storage_offset, mapping.length)
        )
    assert bytes(image) == chain.image


def test_storage_that_is_not_a_local_directory_has_no_local_files(chain: Chain) -> None:
    storage = MemoryStorage()
    chain.store(storage)
    assert BuildFile.open(storage, chain.top, "rootfs.ext4").local_data_files() is None


def test_a_compressed_layer_anywhere_in_the_chain_means_no_local_files(tmp_path: Path, chain: Chain) -> None:
    storage = LocalStorage(tmp_path)
    chain.store(storage, version=4, compression={1: CompressionType.ZSTD})
    assert BuildFile.open(storage, chain.top, "rootfs.ext4").local_data_files() is None


def test_a_missing_ancestor_data_file_means_no_local_files(tmp_path: Path, chain: Chain) -> None:
    storage = LocalStorage(tmp_path)
    chain.store(storage)
    (tmp_path / str(chain.builds[0]) / "rootfs.ext4").unlink()
    assert BuildFile.open(storage, chain.top, "rootfs.ext4").local_data_files() is None

"""Nothing a corrupt header or frame table says can make a read allocate without bound or escape
as a foreign exception: offsets past 2^63, frames claiming gigabytes, decompression bombs,
frames far apart in the compressed object."""

from __future__ import annotations

import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path

import lz4.frame
import pytest
import zstandard

from ember.build import BuildFile
from ember.build.compressed import MAX_FRAME_BYTES, FramedReader
from ember.errors import BuildError, MappingError, StorageError
from ember.header import (
    CompressionType,
    Frame,
    FrameTable,
    Header,
    Mapping,
    MappingTable,
    Metadata,
    serialize_header,
)
from ember.storage import ROOTFS, BuildPaths, LocalStorage, MemoryStorage, Storage

BUILD = uuid.UUID("7d6c5b4a-3f2e-4d1c-9b0a-8f7e6d5c4b3a")
KEY = f"{BUILD}/rootfs.ext4.lz4"
PAGE = 4096
MIB = 1 << 20


class RecordingStorage(MemoryStorage):
    """Records the length of every ranged read; fails them when ``failure`` is set."""

    def __init__(self) -> None:
        super().__init__(f"bounded-{uuid.uuid4()}")
        self.lengths: list[int] = []
        self.failure: StorageError | None = None

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        self.lengths.append(length)
        if self.failure is not None:
            raise self.failure
        return super().read_range(key, offset, length)


def _peak_bytes(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(BuildError):
            action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _table(codec: CompressionType, *frames: tuple[int, int, int, int]) -> FrameTable:
    return FrameTable.from_frames(codec, [Frame(*frame) for frame in frames])


@pytest.mark.parametrize("storage_kind", ["local", "memory"])
def test_a_mapping_stored_past_2_63_is_a_mapping_error(tmp_path: Path, storage_kind: str) -> None:
    storage: Storage = LocalStorage(tmp_path) if storage_kind == "local" else MemoryStorage("past-2-63")
    metadata = Metadata(3, PAGE, 2 * PAGE, 1, BUILD, BUILD)
    table = MappingTable.from_records([Mapping(0, PAGE, BUILD, 0), Mapping(PAGE, PAGE, BUILD, 1 << 63)])
    paths = BuildPaths(BUILD)
    storage.put(paths.header(ROOTFS), serialize_header(Header(metadata, table)))
    storage.put(paths.rootfs, b"\x01" * PAGE)
    device = BuildFile.open(storage, BUILD, ROOTFS)
    assert device.read_at(0, PAGE) == b"\x01" * PAGE
    with pytest.raises(MappingError, match="past the largest offset storage can address"):
        device.read_at(0, 2 * PAGE)
    with pytest.raises(MappingError, match=f"device offset {PAGE}"):
        device.readinto(bytearray(PAGE), PAGE)


def test_a_frame_claiming_more_than_the_frame_limit_is_refused_before_any_read() -> None:
    storage = RecordingStorage()
    storage.put(KEY, lz4.frame.compress(b"\x02" * PAGE))
    table = _table(CompressionType.LZ4, (0, 0, 1 << 30, 64))
    with pytest.raises(BuildError, match=f"over the {MAX_FRAME_BYTES}-byte frame limit"):
        FramedReader(storage).read(KEY, table, 0, PAGE)
    assert storage.lengths == []


def test_a_frame_whose_compressed_size_no_codec_produces_is_refused() -> None:
    storage = RecordingStorage()
    table = _table(CompressionType.LZ4, (0, 0, PAGE, 1 << 30))
    with pytest.raises(BuildError, match="more than any codec produces"):
        FramedReader(storage).read(KEY, table, 0, PAGE)
    assert storage.lengths == []


@pytest.mark.parametrize("codec", [CompressionType.LZ4, CompressionType.ZSTD])
def test_a_decompression_bomb_decodes_no_further_than_the_frame_table_says(codec: CompressionType) -> None:
    bomb_bytes = 256 * MIB
    if codec is CompressionType.LZ4:
        packed = lz4.frame.compress(bytes(bomb_bytes), block_size=lz4.frame.BLOCKSIZE_MAX4MB)
    else:
        packed = zstandard.ZstdCompressor().compress(bytes(bomb_bytes))
    storage = RecordingStorage()
    storage.put(KEY, packed)
    table = _table(codec, (0, 0, 2 * MIB, len(packed)))
    peak = _peak_bytes(lambda: FramedReader(storage).read(KEY, table, 0, PAGE))
    assert peak < 16 * MIB


def test_frames_apart_in_the_object_are_read_apart() -> None:
    first, second = lz4.frame.compress(b"\x03" * PAGE), lz4.frame.compress(b"\x04" * PAGE)
    storage = RecordingStorage()
    storage.put(KEY, first + second)
    far = 1 << 40  # a corrupt table: the second frame "lives" a TiB further on
    table = _table(CompressionType.LZ4, (0, 0, PAGE, len(first)), (PAGE, far, PAGE, len(second)))
    with pytest.raises(BuildError, match=f"ends at byte {far}"):
        FramedReader(storage).read(KEY, table, 0, 2 * PAGE)
    assert storage.lengths == [len(first), len(second)]


def test_a_failing_storage_read_of_a_frame_stays_a_storage_error_for_the_retry_policy() -> None:
    storage = RecordingStorage()
    storage.put(KEY, lz4.frame.compress(b"\x05" * PAGE))
    storage.failure = StorageError("connection reset")
    table = _table(CompressionType.LZ4, (0, 0, PAGE, 64))
    with pytest.raises(StorageError, match="connection reset") as caught:
        FramedReader(storage).read(KEY, table, 0, PAGE)
    assert not isinstance(caught.value, BuildError)


def test_a_frame_that_ends_early_or_late_is_corrupt() -> None:
    whole = lz4.frame.compress(b"\x06" * 2 * PAGE)
    storage = RecordingStorage()
    storage.put(KEY, whole)
    with pytest.raises(BuildError, match="corrupt"):
        FramedReader(storage).read(KEY, _table(CompressionType.LZ4, (0, 0, PAGE, len(whole))), 0, PAGE)
    with pytest.raises(BuildError, match="corrupt"):
        FramedReader(storage).read(KEY, _table(CompressionType.LZ4, (0, 0, 3 * PAGE, len(whole))), 0, PAGE)

from __future__ import annotations

import dataclasses
import random
import struct
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from build_chains import FRAGMENTED_LAYERS, Chain, make_chain

from ember.build.reader import BuildFile
from ember.errors import BuildError, UsageError
from ember.header import NIL_UUID, CompressionType, Header, Mapping, MappingTable, Metadata
from ember.storage import LocalStorage, MemoryStorage, Storage


class CountingStorage(Storage):
    """Delegates to ``inner`` and records every ranged read."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.ranges: list[tuple[str, int, int]] = []

    @property
    def url(self) -> str:
        return self.inner.url

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)

    def create_exclusive(self, key: str, data: bytes) -> None:
        self.inner.create_exclusive(key, data)

    def put_file(self, key: str, path: Path) -> None:
        self.inner.put_file(key, path)

    def get_to_file(self, key: str, path: Path) -> None:
        self.inner.get_to_file(key, path)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        self.ranges.append((key, offset, length))
        return self.inner.read_range(key, offset, length)

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def delete_prefix(self, prefix: str) -> int:
        return self.inner.delete_prefix(prefix)

    def crc32c(self, key: str) -> int | None:
        return self.inner.crc32c(key)


@pytest.fixture
def fragmented_rootfs() -> Chain:
    return make_chain(FRAGMENTED_LAYERS, block_size=4096, size=48 * 4096)


@pytest.fixture(params=["memory", "local"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "memory":
        return MemoryStorage("reader-test")
    return LocalStorage(tmp_path / "templates")


def assert_reads_image(device: BuildFile, image: bytes, block_size: int) -> None:
    assert device.size == len(image)
    for offset in range(0, len(image), block_size):
        assert device.read_at(offset, block_size) == image[offset : offset + block_size], offset
    assert device.read_at(0, len(image)) == image


def test_every_block_of_a_three_generation_chain_reads_as_the_flat_image(
    storage: Storage, fragmented_rootfs: Chain
) -> None:
    fragmented_rootfs.store(storage)
    device = BuildFile.open(storage, fragmented_rootfs.top, "rootfs.ext4")
    assert device.block_size == 4096
    assert_reads_image(device, fragmented_rootfs.image, 4096)


def test_every_generation_reads_as_its_own_image(storage: Storage) -> None:
    layers: list[dict[int, int | None]] = [{b: 1 for b in range(8)}, {2: 2, 3: None}, {3: 3, 7: None}]
    chain = make_chain(layers, block_size=4096, size=8 * 4096)
    chain.store(storage)
    for generation in range(3):
        partial = make_chain(layers[: generation + 1], block_size=4096, size=8 * 4096)
        device = BuildFile.open(storage, chain.builds[generation], "rootfs.ext4")
        assert device.read_at(0, device.size) == partial.image


def test_hand_packed_v3_header_from_the_original_system_reads_correctly(fragmented_rootfs: Chain) -> None:
    storage = MemoryStorage()
    fragmented_rootfs.store(storage)
    chain = fragmented_rootfs
    top = chain.builds[-1]
    packed = struct.pack("<QQQQ16s16s", 3, 4096, chain.size, 2, top.bytes, chain.builds[0].bytes)
    for mapping in chain.mappings[-1]:
        packed += struct.pack(
            "<QQ16sQ", mapping.offset, mapping.length, mapping.build_id.bytes, mapping.storage_offset
        )
    storage.put(f"{top}/rootfs.ext4.header", packed)
    device = BuildFile.open(storage, str(top), "rootfs.ext4")
    assert device.header.metadata.generation == 2
    assert_reads_image(device, chain.image, 4096)


def test_nil_spans_are_zero_filled_without_storage_calls(fragmented_rootfs: Chain) -> None:
    inner = MemoryStorage()
    fragmented_rootfs.store(inner)
    storage = CountingStorage(inner)
    device = BuildFile.open(storage, fragmented_rootfs.top, "rootfs.ext4")
    for block in (20, 30, 40, 44):
        assert device.read_at(block * 4096, 4096) == bytes(4096)
    assert device.read_at(43 * 4096, 4 * 4096) == bytes(4 * 4096)
    assert storage.ranges == []

    # Blocks 40-47: nil except 41-42 (generation 1) and 47 (the top build): one read from each.
    assert device.read_at(40 * 4096, 8 * 4096) == fragmented_rootfs.image[40 * 4096 :]
    assert sorted(key for key, _, _ in storage.ranges) == sorted(
        f"{build}/rootfs.ext4" for build in fragmented_rootfs.builds[1:]
    )


def test_reads_crossing_mapping_boundaries_at_any_byte_offset_match_the_image(
    storage: Storage, fragmented_rootfs: Chain
) -> None:
    fragmented_rootfs.store(storage)
    image = fragmented_rootfs.image
    device = BuildFile.open(storage, fragmented_rootfs.top, "rootfs.ext4")
    rng = random.Random(7)
    for _ in range(200):
        offset = rng.randrange(len(image))
        length = rng.randrange(1, 5 * 4096)
        assert device.read_at(offset, length) == image[offset : offset + length], (offset, length)
        buffer = bytearray(length)
        filled = device.readinto(buffer, offset)
        assert buffer[:filled] == image[offset : offset + length]


class IntoOnlyStorage(MemoryStorage):
    """A store whose ranged reads must go straight into the caller's memory."""

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        raise AssertionError(f"read_range({key!r}, {offset}, {length}) made an intermediate copy")


def test_readinto_fills_a_reused_buffer_straight_from_storage_and_zeroes_nil_spans(
    fragmented_rootfs: Chain,
) -> None:
    storage = IntoOnlyStorage()
    fragmented_rootfs.store(storage)
    device = BuildFile.open(storage, fragmented_rootfs.top, "rootfs.ext4")
    buffer = bytearray(b"\xff" * device.size)  # stale bytes where nil spans must read as zeros
    assert device.readinto(buffer, 0) == device.size
    assert buffer == fragmented_rootfs.image
    assert device.read_at(0, device.size) == fragmented_rootfs.image


def test_a_nil_span_larger_than_the_zero_page_pool_reads_as_zeros() -> None:
    build = uuid.uuid4()
    size = 9 << 20
    header = Header(
        Metadata.new_template(build, 4096, size), MappingTable.from_records([Mapping(0, size, NIL_UUID, 0)])
    )
    storage = CountingStorage(MemoryStorage())
    device = BuildFile(storage, build, "rootfs.ext4", header)
    buffer = bytearray(b"\xff" * size)
    assert device.readinto(buffer, 0) == size
    assert buffer == bytes(size)
    assert storage.ranges == []


def test_readinto_leaves_the_buffer_past_the_device_end_untouched(fragmented_rootfs: Chain) -> None:
    storage = MemoryStorage()
    fragmented_rootfs.store(storage)
    device = BuildFile.open(storage, fragmented_rootfs.top, "rootfs.ext4")
    buffer = bytearray(b"\xee" * 3 * 4096)
    assert device.readinto(memoryview(buffer)[4096:], device.size - 1000) == 1000
    assert buffer == b"\xee" * 4096 + fragmented_rootfs.image[-1000:] + b"\xee" * (2 * 4096 - 1000)


def test_readinto_a_read_only_buffer_is_a_usage_error(fragmented_rootfs: Chain) -> None:
    storage = MemoryStorage()
    fragmented_rootfs.store(storage)
    device = BuildFile.open(storage, fragmented_rootfs.top, "rootfs.ext4")
    with pytest.raises(UsageError, match="writable"):
        device.readinto(memoryview(bytes(4096)), 0)


def test_read_past_the_device_end_is_short(fragmented_rootfs: Chain) -> None:
    storage = MemoryStorage()
    fragmented_rootfs.store(storage)
    device = BuildFile.open(storage, fragmented_rootfs.top, "rootfs.ext4")
    tail = device.size - 100
    assert device.read_at(tail, 4096) == fragmented_rootfs.image[tail:]
    assert device.read_at(device.size, 4096) == b""
    assert device.read_at(device.size + 4096, 10) == b""
    buffer = bytearray(4096)
    assert device.readinto(buffer, tail) == 100
    assert device.readinto(buffer, device.size) == 0


def test_negative_offset_is_rejected(fragmented_rootfs: Chain) -> None:
    storage = MemoryStorage()
    fragmented_rootfs.store(storage)
    device = BuildFile.open(storage, fragmented_rootfs.top, "rootfs.ext4")
    with pytest.raises(BuildError, match="offset=-1"):
        device.read_at(-1, 10)


@pytest.mark.parametrize(("file_name", "block_size"), [("rootfs.ext4", 4096), ("memfile", 2 << 20)])
def test_legacy_build_without_header_reads_its_data_object(
    storage: Storage, file_name: str, block_size: int
) -> None:
    build = uuid.uuid4()
    content = random.Random(3).randbytes(10_000)
    storage.put(f"{build}/{file_name}", content)
    device = BuildFile.open(storage, build, file_name)
    assert device.size == 10_000
    assert device.block_size == block_size
    assert device.header.metadata.generation == 1
    assert device.read_at(0, 20_000) == content
    assert device.read_at(8192, 4096) == content[8192:]


def test_unknown_build_raises_build_error_naming_the_build_and_storage() -> None:
    storage = MemoryStorage("empty-store")
    build = uuid.uuid4()
    with pytest.raises(BuildError, match=str(build)) as caught:
        BuildFile.open(storage, build, "rootfs.ext4")
    assert "memory://empty-store" in str(caught.value)


def test_unknown_file_name_is_rejected() -> None:
    with pytest.raises(BuildError, match="snapfile"):
        BuildFile.open(MemoryStorage(), uuid.uuid4(), "snapfile")


def test_truncated_data_object_raises_build_error_not_zeros(
    storage: Storage, fragmented_rootfs: Chain
) -> None:
    fragmented_rootfs.store(storage)
    middle = fragmented_rootfs.builds[1]
    key = f"{middle}/rootfs.ext4"
    storage.put(key, fragmented_rootfs.data[1][:-4096])
    device = BuildFile.open(storage, fragmented_rootfs.top, "rootfs.ext4")
    # Block 42 is the last block generation 1 packed, so its bytes are the ones cut off.
    with pytest.raises(BuildError, match=key) as caught:
        device.read_at(42 * 4096, 4096)
    assert str(middle) in str(caught.value)
    with pytest.raises(BuildError):
        device.read_at(0, device.size)
    assert device.read_at(0, 4096) == fragmented_rootfs.image[:4096]


def test_missing_ancestor_data_object_raises_build_error(fragmented_rootfs: Chain) -> None:
    storage = MemoryStorage()
    fragmented_rootfs.store(storage)
    base = fragmented_rootfs.builds[0]
    storage.delete_prefix(f"{base}/rootfs.ext4")
    device = BuildFile.open(storage, fragmented_rootfs.top, "rootfs.ext4")
    with pytest.raises(BuildError, match=f"{base}/rootfs.ext4"):
        device.read_at(0, 4096)


@pytest.mark.parametrize("version", [4, 5])
def test_compressed_lz4_and_zstd_layers_read_correctly(
    storage: Storage, fragmented_rootfs: Chain, version: int
) -> None:
    codecs = {1: CompressionType.ZSTD, 2: CompressionType.LZ4}
    fragmented_rootfs.store(storage, version=version, compression=codecs)
    assert not storage.exists(f"{fragmented_rootfs.top}/rootfs.ext4")
    device = BuildFile.open(storage, fragmented_rootfs.top, "rootfs.ext4")
    assert_reads_image(device, fragmented_rootfs.image, 4096)
    rng = random.Random(11)
    for _ in range(100):
        offset = rng.randrange(device.size)
        length = rng.randrange(1, 6 * 4096)
        assert device.read_at(offset, length) == fragmented_rootfs.image[offset : offset + length]


def test_ancestor_missing_from_a_v4_header_is_read_with_its_own_frame_table(fragmented_rootfs: Chain) -> None:
    storage = MemoryStorage()
    codecs = {1: CompressionType.ZSTD}
    fragmented_rootfs.store(storage, version=4, compression=codecs)
    top = fragmented_rootfs.header(2, 4, codecs)
    assert top.builds is not None
    without_middle = {
        build: data for build, data in top.builds.items() if build != fragmented_rootfs.builds[1]
    }
    device = BuildFile(
        storage, top.metadata.build_id, "rootfs.ext4", dataclasses.replace(top, builds=without_middle)
    )
    assert device.read_at(0, device.size) == fragmented_rootfs.image


def test_corrupt_compressed_frame_raises_build_error(fragmented_rootfs: Chain) -> None:
    storage = MemoryStorage()
    fragmented_rootfs.store(storage, version=4, compression={2: CompressionType.LZ4})
    key = f"{fragmented_rootfs.top}/rootfs.ext4.lz4"
    damaged = bytearray(storage.get(key))
    damaged[len(damaged) // 2] ^= 0xFF
    storage.put(key, bytes(damaged))
    device = BuildFile.open(storage, fragmented_rootfs.top, "rootfs.ext4")
    with pytest.raises(BuildError, match=r"rootfs\.ext4\.lz4"):
        device.read_at(0, device.size)


def test_concurrent_readers_share_one_build_file(fragmented_rootfs: Chain) -> None:
    storage = MemoryStorage()
    fragmented_rootfs.store(storage, version=4, compression={1: CompressionType.LZ4})
    device = BuildFile.open(storage, fragmented_rootfs.top, "rootfs.ext4")
    image = fragmented_rootfs.image

    def check(seed: int) -> int:
        rng = random.Random(seed)
        for _ in range(100):
            offset = rng.randrange(len(image))
            length = rng.randrange(1, 3 * 4096)
            assert device.read_at(offset, length) == image[offset : offset + length]
        return seed

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(check, range(8))) == list(range(8))

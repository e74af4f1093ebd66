"""Layered reads through the native loop (maps of local objects and cached chunks) vs the flat image.

The chain here is big enough that its data objects span several 4 MiB cache chunks, and the
expected image is computed block by block by ``build_chains``, independently of ember.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from build_chains import Chain, Layer, make_chain
from hypothesis import given, settings
from hypothesis import strategies as st

import ember.storage.mapped
from ember.build.reader import BuildFile
from ember.errors import BuildError, StorageError, UsageError
from ember.header import CompressionType
from ember.storage import MEMORY_CHUNK_SIZE, ChunkCache, LocalStorage, Storage

BLOCK = 4096
BLOCKS = 3000
SIZE = BLOCKS * BLOCK - 1234  # the last block is partial: reads near the end are short


def random_layers(seed: int) -> list[Layer]:
    """A base with most blocks written, then three layers of short rewritten and zeroed runs."""
    rng = random.Random(seed)
    layers: list[Layer] = [{block: 1 for block in range(BLOCKS) if rng.random() < 0.92}]
    for generation in range(1, 4):
        layer: Layer = {}
        for _ in range(BLOCKS // 25):
            start = rng.randrange(BLOCKS)
            zeroed = rng.random() < 0.15
            for block in range(start, min(start + rng.randint(1, 24), BLOCKS)):
                layer[block] = None if zeroed else generation + 1
        layers.append(layer)
    return layers


@pytest.fixture(scope="module")
def chain() -> Chain:
    return make_chain(random_layers(5), block_size=BLOCK, size=SIZE)


def stored(
    chain: Chain, root: Path, *, version: int = 3, compression: dict[int, CompressionType] | None = None
) -> LocalStorage:
    local = LocalStorage(root / "templates")
    chain.store(local, version=version, compression=compression)
    return local


def warm(chain: Chain, cache_root: Path, local: LocalStorage, *, ranges: int | None = None) -> None:
    """Fetch chunks into ``cache_root`` through another cache instance: all, or a few random reads' worth."""
    other = ChunkCache(local, cache_root)
    device = BuildFile.open(other, chain.top, chain.file_name)
    if ranges is None:
        device.read_at(0, SIZE)
        return
    rng = random.Random(ranges)
    for _ in range(ranges):
        device.read_at(rng.randrange(SIZE), 64 * BLOCK)


STORAGES = [
    "local",
    "local-tiny-limits",
    "cache-cold",
    "cache-partly-warm",
    "cache-warm",
    "cache-tiny-limits",
]


def open_storage(kind: str, chain: Chain, root: Path) -> Storage:
    local = stored(chain, root)
    if kind == "local":
        return local
    if kind == "local-tiny-limits":
        return LocalStorage(local.root, max_mapped=1, max_open_files=1)
    cache_root = root / "cache"
    if kind == "cache-partly-warm":
        warm(chain, cache_root, local, ranges=6)
    elif kind == "cache-warm":
        warm(chain, cache_root, local)
    if kind == "cache-tiny-limits":
        return ChunkCache(local, cache_root, max_mapped=2, max_open_files=1)
    return ChunkCache(local, cache_root)


@pytest.mark.parametrize("kind", STORAGES)
def test_sequential_reads_return_the_flat_image(kind: str, chain: Chain, tmp_path: Path) -> None:
    device = BuildFile.open(open_storage(kind, chain, tmp_path), chain.top, chain.file_name)
    for step in (4 << 20, 1_000_003, 65536 + 17):
        parts = [device.read_at(offset, step) for offset in range(0, SIZE, step)]
        assert b"".join(parts) == chain.image, step
    buffer = bytearray(4 << 20)
    for offset in range(0, SIZE, len(buffer)):
        filled = device.readinto(buffer, offset)
        assert filled == min(len(buffer), SIZE - offset)
        assert buffer[:filled] == chain.image[offset : offset + filled], offset


@pytest.mark.parametrize("kind", STORAGES)
def test_random_reads_return_the_image_and_stop_at_the_device_end(
    kind: str, chain: Chain, tmp_path: Path
) -> None:
    device = BuildFile.open(open_storage(kind, chain, tmp_path), chain.top, chain.file_name)
    image = chain.image
    rng = random.Random(kind)
    for _ in range(300):
        offset = rng.randrange(SIZE + 3 * BLOCK)
        length = rng.choice([rng.randrange(2 * BLOCK), rng.randrange(300_000), rng.randrange(6 << 20)])
        assert device.read_at(offset, length) == image[offset : offset + length], (offset, length)
        buffer = bytearray(b"\xa5" * (length + 7))
        filled = device.readinto(memoryview(buffer)[:length], offset)
        assert filled == len(image[offset : offset + length])
        assert buffer[:filled] == image[offset : offset + filled], (offset, length)
        assert buffer[filled:] == b"\xa5" * (len(buffer) - filled)


@pytest.fixture(scope="module")
def tiny_cache_device(chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> BuildFile:
    root = tmp_path_factory.mktemp("native-hypothesis")
    cache = ChunkCache(stored(chain, root), root / "cache", max_mapped=2, max_open_files=1)
    return BuildFile.open(cache, chain.top, chain.file_name)


@settings(max_examples=150, deadline=None)
@given(offset=st.integers(0, SIZE + BLOCK), length=st.integers(0, 3 * MEMORY_CHUNK_SIZE))
def test_any_range_through_a_cache_that_keeps_two_chunks_mapped_reads_as_the_image(
    tiny_cache_device: BuildFile, chain: Chain, offset: int, length: int
) -> None:
    assert tiny_cache_device.read_at(offset, length) == chain.image[offset : offset + length]


def test_a_warm_cache_serves_reads_from_maps_and_counts_them_as_chunk_hits(
    chain: Chain, tmp_path: Path
) -> None:
    cache = ChunkCache(stored(chain, tmp_path), tmp_path / "cache")
    device = BuildFile.open(cache, chain.top, chain.file_name)
    assert device.read_at(0, SIZE) == chain.image
    fetched = cache.stats().chunks_fetched
    hits = cache.stats().chunk_hits
    mapped_hits = cache.mapped_files().hits
    assert device.read_at(0, SIZE) == chain.image
    assert cache.stats().chunks_fetched == fetched
    assert cache.mapped_files().hits > mapped_hits
    assert cache.stats().chunk_hits - hits == cache.mapped_files().hits - mapped_hits


def test_a_compressed_layer_is_read_through_python_while_the_others_use_maps(
    chain: Chain, tmp_path: Path
) -> None:
    local = stored(chain, tmp_path, version=4, compression={2: CompressionType.ZSTD})
    for storage in (local, ChunkCache(local, tmp_path / "cache")):
        device = BuildFile.open(storage, chain.top, chain.file_name)
        for _ in range(2):
            assert device.read_at(0, SIZE) == chain.image
            buffer = bytearray(SIZE)
            assert device.readinto(buffer, 0) == SIZE
            assert buffer == chain.image
        assert storage.mapped_files().hits > 0
        assert len(storage.mapped_files()) > 0


def test_a_data_object_replaced_by_a_shorter_one_raises_build_error_after_it_was_mapped(
    chain: Chain, tmp_path: Path
) -> None:
    local = stored(chain, tmp_path)
    for storage in (local, ChunkCache(local, tmp_path / "cache")):
        chain.store(local)
        device = BuildFile.open(storage, chain.top, chain.file_name)
        assert device.read_at(0, SIZE) == chain.image  # every object is mapped now
        base = chain.builds[0]
        key = f"{base}/{chain.file_name}"
        storage.put(key, chain.data[0][: len(chain.data[0]) // 2])
        with pytest.raises(BuildError, match=key) as caught:
            device.read_at(0, SIZE)
        assert str(base) in str(caught.value)
        assert "truncated" in str(caught.value)


def test_a_deleted_data_object_raises_build_error_instead_of_serving_its_old_map(
    chain: Chain, tmp_path: Path
) -> None:
    local = stored(chain, tmp_path)
    for storage in (local, ChunkCache(local, tmp_path / "cache")):
        chain.store(local)
        device = BuildFile.open(storage, chain.top, chain.file_name)
        assert device.read_at(0, SIZE) == chain.image
        base = chain.builds[0]
        storage.delete_prefix(f"{base}/{chain.file_name}")
        with pytest.raises(BuildError, match=f"{base}/{chain.file_name}"):
            device.read_at(0, SIZE)


def test_close_drops_the_maps_and_reads_go_on_correctly(chain: Chain, tmp_path: Path) -> None:
    local = stored(chain, tmp_path)
    for storage in (local, ChunkCache(local, tmp_path / "cache")):
        device = BuildFile.open(storage, chain.top, chain.file_name)
        assert device.read_at(0, SIZE) == chain.image
        maps = storage.mapped_files().maps
        assert maps.mapped > 0
        storage.close()
        assert (maps.mapped, maps.pending) == (0, 0)
        assert device.read_at(0, SIZE) == chain.image
        assert maps.mapped > 0


def test_concurrent_readers_see_the_image_while_maps_are_evicted_dropped_and_closed(
    chain: Chain, tmp_path: Path
) -> None:
    local = stored(chain, tmp_path)
    cache = ChunkCache(local, tmp_path / "cache", max_mapped=3, max_open_files=2)
    tiny_local = LocalStorage(local.root, max_mapped=2, max_open_files=1)
    devices = [BuildFile.open(storage, chain.top, chain.file_name) for storage in (cache, tiny_local)]
    image = chain.image
    stop = threading.Event()
    failures: list[BaseException] = []

    def guarded(action: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                action()
            except BaseException as exc:
                failures.append(exc)
                stop.set()

        return run

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        device = devices[seed % 2]
        buffer = bytearray(2 << 20)
        for _ in range(150):
            offset = rng.randrange(SIZE)
            length = rng.choice([BLOCK, 40_000, 700_000, 2 << 20])
            filled = device.readinto(memoryview(buffer)[:length], offset)
            assert buffer[:filled] == image[offset : offset + length], (seed, offset, length)

    def disturber() -> None:
        rng = random.Random(99)
        generation = 0
        while not stop.wait(0.002):
            choice = rng.randrange(3)
            generation = (generation + 1) % len(chain.builds)
            key = f"{chain.builds[generation]}/{chain.file_name}"
            if choice == 0:
                cache.close()
                tiny_local.close()
            elif choice == 1:
                cache.put(key, chain.data[generation])  # same bytes: invalidates every map of the key
            else:
                tiny_local.put(key, chain.data[generation])

    readers = [threading.Thread(target=guarded(lambda seed=seed: reader(seed))) for seed in range(4)]
    disturbing = threading.Thread(target=guarded(disturber))
    disturbing.start()
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join()
    stop.set()
    disturbing.join()
    assert failures == []
    for storage in (cache, tiny_local):
        assert storage.mapped_files().maps.pending == 0  # nothing retired is left mapped
        assert len(storage.mapped_files()) <= 3


def test_a_storage_subclass_sees_every_read(chain: Chain, tmp_path: Path) -> None:
    calls: list[str] = []

    class Watched(LocalStorage):
        def read_range_into(self, key: str, offset: int, buffer: bytearray | memoryview) -> int:
            calls.append(key)
            return super().read_range_into(key, offset, buffer)

    watched = Watched(stored(chain, tmp_path).root)
    device = BuildFile.open(watched, chain.top, chain.file_name)
    assert device.read_at(0, SIZE) == chain.image
    first = len(calls)
    assert device.read_at(0, SIZE) == chain.image
    assert first > 0
    assert len(calls) == 2 * first


def test_invalid_reads_raise_the_same_errors_on_the_native_path(chain: Chain, tmp_path: Path) -> None:
    device = BuildFile.open(stored(chain, tmp_path), chain.top, chain.file_name)
    with pytest.raises(UsageError, match="writable"):
        device.readinto(memoryview(bytes(BLOCK)), 0)
    with pytest.raises(BuildError, match="offset=-1"):
        device.readinto(bytearray(BLOCK), -1)
    with pytest.raises(BuildError, match="length=-5"):
        device.read_at(0, -5)
    assert device.read_at(2**70, 10) == b""
    assert device.readinto(bytearray(10), 2**70) == 0
    assert device.read_at(SIZE, 10) == b""


def test_without_the_compiled_loop_a_local_build_asks_for_make_setup(
    chain: Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ember.storage.mapped, "_IMPORT_ERROR", ImportError("no _mapped module"))
    with pytest.raises(StorageError, match="make setup"):
        BuildFile.open(stored(chain, tmp_path), chain.top, chain.file_name)

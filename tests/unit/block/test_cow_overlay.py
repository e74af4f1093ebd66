from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from block_devices import BLOCK, BytesDevice, open_overlay, random_image

from ember.block import BlockState, CowCache, Overlay, ZeroDevice
from ember.errors import BuildError, UsageError

BLOCKS = 64


@pytest.fixture
def base() -> BytesDevice:
    return BytesDevice(random_image(BLOCKS, seed=1))


@pytest.fixture
def overlay(tmp_path: Path, base: BytesDevice) -> Iterator[Overlay]:
    device = open_overlay(tmp_path, base)
    yield device
    device.close()


def block_states(overlay: Overlay) -> list[BlockState]:
    return [overlay.tracker.state_of(block) for block in range(overlay.tracker.block_count)]


def test_an_untouched_overlay_reads_as_its_base(overlay: Overlay, base: BytesDevice) -> None:
    assert overlay.size == base.size and overlay.block_size == BLOCK
    assert overlay.read_at(0, overlay.size) == base.image
    assert overlay.read_at(100, 5000) == base.image[100:5100]


def test_written_blocks_read_back_and_are_dirty(overlay: Overlay, base: BytesDevice) -> None:
    payload = b"\xab" * (2 * BLOCK)
    overlay.write_at(payload, 3 * BLOCK)
    assert overlay.read_at(3 * BLOCK, 2 * BLOCK) == payload
    untouched, dirty = BlockState.NOT_PRESENT, BlockState.DIRTY
    assert block_states(overlay)[2:6] == [untouched, dirty, dirty, untouched]
    assert overlay.read_at(0, 3 * BLOCK) == base.image[: 3 * BLOCK]


def test_an_all_zero_block_is_punched_and_marked_zero_not_dirty(overlay: Overlay) -> None:
    overlay.write_at(b"\x11" * BLOCK + bytes(BLOCK) + b"\x22" * BLOCK, 0)
    assert block_states(overlay)[:3] == [BlockState.DIRTY, BlockState.ZERO, BlockState.DIRTY]
    assert overlay.read_at(BLOCK, BLOCK) == bytes(BLOCK)


def test_zeroing_part_of_a_block_that_leaves_it_all_zero_makes_it_a_zero_block(overlay: Overlay) -> None:
    overlay.write_at(b"\x33" * 100, 10 * BLOCK + 50)
    assert overlay.tracker.state_of(10) == BlockState.DIRTY
    overlay.write_zeroes_at(10 * BLOCK, BLOCK)
    overlay.write_at(bytes(BLOCK), 11 * BLOCK)
    assert overlay.tracker.state_of(10) == BlockState.ZERO
    assert overlay.tracker.state_of(11) == BlockState.ZERO


def test_unaligned_writes_keep_the_surrounding_bytes_of_their_edge_blocks(
    overlay: Overlay, base: BytesDevice
) -> None:
    image = bytearray(base.image)
    for data, offset in [(b"\x01" * 10, 5), (b"\x02" * (3 * BLOCK), BLOCK + 7), (b"\x03" * 3, 6 * BLOCK - 1)]:
        overlay.write_at(data, offset)
        image[offset : offset + len(data)] = data
    assert overlay.read_at(0, overlay.size) == bytes(image)
    assert block_states(overlay)[:7] == [BlockState.DIRTY] * 7


def test_random_writes_zeroes_and_reads_at_any_alignment_match_a_flat_model(
    overlay: Overlay, base: BytesDevice
) -> None:
    rng = random.Random(3)
    image = bytearray(base.image)
    for _ in range(300):
        offset = rng.randrange(overlay.size)
        length = rng.randrange(1, min(5 * BLOCK, overlay.size - offset) + 1)
        action = rng.random()
        if action < 0.4:
            data = rng.randbytes(length)
            overlay.write_at(data, offset)
            image[offset : offset + length] = data
        elif action < 0.6:
            overlay.write_at(bytes(length), offset)
            image[offset : offset + length] = bytes(length)
        elif action < 0.8:
            overlay.write_zeroes_at(offset, length)
            image[offset : offset + length] = bytes(length)
        else:
            assert overlay.read_at(offset, length) == image[offset : offset + length]
    assert overlay.read_at(0, overlay.size) == bytes(image)
    for block, state in enumerate(block_states(overlay)):
        content = bytes(image[block * BLOCK : (block + 1) * BLOCK])
        if state == BlockState.ZERO:
            assert content == bytes(BLOCK), block
        elif state == BlockState.NOT_PRESENT:
            assert content == base.image[block * BLOCK : (block + 1) * BLOCK], block


def test_a_read_spanning_dirty_zero_and_base_runs_is_assembled_in_order(
    overlay: Overlay, base: BytesDevice
) -> None:
    overlay.write_at(b"\xd1" * (2 * BLOCK), 2 * BLOCK)
    overlay.write_zeroes_at(4 * BLOCK, 3 * BLOCK)
    overlay.write_at(b"\xd2" * BLOCK, 9 * BLOCK)
    expected = (
        base.image[BLOCK + 9 : 2 * BLOCK]
        + b"\xd1" * (2 * BLOCK)
        + bytes(3 * BLOCK)
        + base.image[7 * BLOCK : 9 * BLOCK]
        + b"\xd2" * BLOCK
        + base.image[10 * BLOCK : 10 * BLOCK + 11]
    )
    base.bytes_read = 0
    assert overlay.read_at(BLOCK + 9, len(expected)) == expected
    buffer = bytearray(len(expected))
    assert overlay.readinto(buffer, BLOCK + 9) == len(expected)
    assert bytes(buffer) == expected
    assert base.bytes_read == 2 * (BLOCK - 9 + 2 * BLOCK + 11), "dirty and zero runs never touch the base"


def test_trim_frees_the_cache_blocks_it_covers(overlay: Overlay) -> None:
    overlay.write_at(b"\x5c" * (32 * BLOCK), 0)
    overlay.flush()
    before = os.stat(overlay.cache.path).st_blocks
    assert before * 512 >= 32 * BLOCK
    overlay.write_zeroes_at(0, 32 * BLOCK)
    assert os.stat(overlay.cache.path).st_blocks < before
    assert overlay.read_at(0, 32 * BLOCK) == bytes(32 * BLOCK)
    assert block_states(overlay)[:33] == [BlockState.ZERO] * 32 + [BlockState.NOT_PRESENT]


def test_zeroing_an_unaligned_range_zeroes_exactly_that_range(overlay: Overlay, base: BytesDevice) -> None:
    overlay.write_zeroes_at(BLOCK + 100, 2 * BLOCK)
    assert overlay.read_at(0, 4 * BLOCK) == (
        base.image[: BLOCK + 100] + bytes(2 * BLOCK) + base.image[3 * BLOCK + 100 : 4 * BLOCK]
    )
    untouched, dirty, zero = BlockState.NOT_PRESENT, BlockState.DIRTY, BlockState.ZERO
    assert block_states(overlay)[:4] == [untouched, dirty, zero, dirty]
    overlay.write_zeroes_at(20 * BLOCK + 1, 10)
    assert (
        overlay.read_at(20 * BLOCK, 12)
        == base.image[20 * BLOCK : 20 * BLOCK + 1]
        + bytes(10)
        + (base.image[20 * BLOCK + 11 : 20 * BLOCK + 12])
    )


@pytest.mark.parametrize(("offset", "length"), [(-1, 1), (BLOCKS * BLOCK - 1, 2), (BLOCKS * BLOCK + 1, 0)])
def test_writes_and_zeroing_outside_the_device_are_refused(
    overlay: Overlay, offset: int, length: int
) -> None:
    with pytest.raises(UsageError, match="holds"):
        overlay.write_at(b"x" * length, offset)
    with pytest.raises(UsageError, match="holds"):
        overlay.write_zeroes_at(offset, length)


def test_reads_past_the_end_are_short_and_reads_starting_past_it_are_refused(
    overlay: Overlay, base: BytesDevice
) -> None:
    assert overlay.read_at(overlay.size - 10, 100) == base.image[-10:]
    assert overlay.read_at(overlay.size, 100) == b""
    with pytest.raises(UsageError, match="holds"):
        overlay.read_at(overlay.size + 1, 1)
    with pytest.raises(UsageError, match="holds"):
        overlay.readinto(bytearray(1), -1)
    with pytest.raises(UsageError, match="holds"):
        overlay.read_at(0, -1)


def test_a_base_returning_fewer_bytes_than_its_size_is_a_build_error(tmp_path: Path) -> None:
    class Truncated(BytesDevice):
        def readinto(self, buffer: bytearray | memoryview, offset: int) -> int:
            return 0

    overlay = open_overlay(tmp_path, Truncated(bytes(4 * BLOCK)))
    with pytest.raises(BuildError, match="fewer than"):
        overlay.read_at(0, BLOCK)
    overlay.close()


def test_a_cache_of_another_size_is_refused(tmp_path: Path) -> None:
    cache = CowCache.create(tmp_path, "rootfs-test", 8 * BLOCK)
    with pytest.raises(UsageError, match="base device's size"):
        Overlay(BytesDevice(bytes(4 * BLOCK)), cache)
    cache.close()


def test_close_deletes_the_cache_and_refuses_further_use(tmp_path: Path, base: BytesDevice) -> None:
    image = base.image
    with open_overlay(tmp_path, base) as overlay:
        overlay.write_at(b"\x44" * BLOCK, 0)
        path = overlay.cache.path
    assert not path.exists()
    assert base.image == image
    for call in (lambda: overlay.read_at(0, 1), lambda: overlay.write_at(b"x", 0), overlay.flush):
        with pytest.raises(UsageError, match="closed"):
            call()


def test_a_zero_device_base_reads_zeros_and_stops_at_its_end(tmp_path: Path) -> None:
    device = ZeroDevice(4 * BLOCK)
    buffer = bytearray(b"\xff" * (2 * BLOCK))
    assert device.readinto(buffer, 3 * BLOCK) == BLOCK
    assert buffer == bytes(BLOCK) + b"\xff" * BLOCK
    overlay = Overlay(device, CowCache.create(tmp_path, "rootfs-empty", device.size))
    overlay.write_at(b"\x01", 5)
    assert overlay.read_at(0, 8) == bytes(5) + b"\x01" + bytes(2)
    overlay.close()


def test_paused_writes_hold_writers_back_until_released(overlay: Overlay) -> None:
    written = threading.Event()

    def writer() -> None:
        overlay.write_at(b"\x66" * BLOCK, 40 * BLOCK)
        written.set()

    with overlay.paused_writes():
        thread = threading.Thread(target=writer)
        thread.start()
        assert not written.wait(0.2)
        assert overlay.read_at(40 * BLOCK, 1) != b"\x66"
    thread.join()
    assert written.is_set()
    assert overlay.read_at(40 * BLOCK, BLOCK) == b"\x66" * BLOCK


def test_concurrent_unaligned_writers_of_one_block_lose_no_bytes(overlay: Overlay) -> None:
    """Eight threads each own 512 bytes of the same blocks; read-modify-write must not drop any."""
    rounds = 150
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            for round_index in range(rounds):
                value = bytes([(index * 31 + round_index) % 255 + 1]) * 512
                for block in (0, 1, 17):
                    overlay.write_at(value, block * BLOCK + index * 512)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    expected = b"".join(bytes([(index * 31 + rounds - 1) % 255 + 1]) * 512 for index in range(8))
    for block in (0, 1, 17):
        assert overlay.read_at(block * BLOCK, BLOCK) == expected, block


def test_concurrent_writers_of_distinct_blocks_and_readers_see_only_whole_writes(
    overlay: Overlay, base: BytesDevice
) -> None:
    """Each writer owns four blocks; readers check that stable blocks always read exactly."""
    stop = threading.Event()
    errors: list[BaseException] = []
    stable = range(48, 64)

    def writer(index: int) -> None:
        try:
            blocks = range(index * 4, index * 4 + 4)
            for round_index in range(60):
                for block in blocks:
                    fill = bytes(BLOCK) if round_index % 5 == 4 else bytes([index + 1]) * BLOCK
                    overlay.write_at(fill, block * BLOCK)
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            expected = base.image[stable.start * BLOCK : stable.stop * BLOCK]
            while not stop.is_set():
                assert overlay.read_at(stable.start * BLOCK, len(expected)) == expected
                whole = overlay.read_at(0, 48 * BLOCK)
                for block in range(48):
                    content = whole[block * BLOCK : (block + 1) * BLOCK]
                    owner_fill = bytes([block // 4 + 1]) * BLOCK
                    assert content in (
                        owner_fill,
                        bytes(BLOCK),
                        base.image[block * BLOCK : (block + 1) * BLOCK],
                    )
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(index,)) for index in range(12)]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in readers:
        thread.join()
    assert errors == []
    assert overlay.read_at(0, 48 * BLOCK) == b"".join(bytes(4 * BLOCK) for _ in range(12))
    assert block_states(overlay)[:48] == [BlockState.ZERO] * 48

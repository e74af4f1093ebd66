"""Sizes read from a header are bounded before anything is sized or computed from them.

Headers are packed by hand (64-byte prefix, 40-byte records) so the values can be ones
ember's writer would never produce.
"""

from __future__ import annotations

import struct
import uuid

import numpy as np
import pytest

from ember.errors import HeaderError, UsageError
from ember.header import (
    MAX_DEVICE_SIZE,
    NIL_UUID,
    DiffMetadata,
    check_can_derive,
    check_data_block_size,
    deserialize_header,
    visualize,
)

BUILD = uuid.UUID("5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d")
PAGE = 4096


def v3(size: int, *, block_size: int = PAGE, generation: int = 1, rows: int = 1) -> bytes:
    prefix = struct.pack("<QQQQ16s16s", 3, block_size, size, generation, BUILD.bytes, BUILD.bytes)
    length = -(-min(size, 1 << 40) // PAGE) * PAGE // rows
    body = b"".join(struct.pack("<QQ16sQ", i * length, length, BUILD.bytes, i * length) for i in range(rows))
    return prefix + body


def test_a_header_of_16_tib_is_read() -> None:
    assert deserialize_header(v3(MAX_DEVICE_SIZE)).metadata.size == 1 << 44


@pytest.mark.parametrize("size", [MAX_DEVICE_SIZE + PAGE, (1 << 64) - PAGE])
def test_a_header_claiming_more_than_16_tib_is_refused(size: int) -> None:
    with pytest.raises(HeaderError, match=f"header size {size} bytes is over the 16 TiB"):
        deserialize_header(v3(size))


def test_a_diff_on_top_of_the_last_generation_is_refused_up_front() -> None:
    last = deserialize_header(v3(16 * PAGE, generation=(1 << 64) - 1))
    with pytest.raises(HeaderError, match=f"build {BUILD} is at generation {(1 << 64) - 1}, the last"):
        check_can_derive(last)
    diff = DiffMetadata(np.array([0], np.uint64), np.array([], np.uint64), PAGE)
    with pytest.raises(HeaderError, match="no diff build can be made on top of it"):
        diff.to_diff_header(last, uuid.uuid4())


def test_the_generation_before_the_last_can_still_have_a_child() -> None:
    parent = deserialize_header(v3(16 * PAGE, generation=(1 << 64) - 2))
    check_can_derive(parent)
    diff = DiffMetadata(np.array([0], np.uint64), np.array([], np.uint64), PAGE)
    assert diff.to_diff_header(parent, uuid.uuid4()).metadata.generation == (1 << 64) - 1


@pytest.mark.parametrize("block_size", [1 << 63, 512, 8192, 3 * PAGE])
def test_data_is_read_only_in_4_kib_or_2_mib_blocks(block_size: int) -> None:
    header = deserialize_header(v3(16 * PAGE, block_size=block_size))
    with pytest.raises(HeaderError, match=f"has block size {block_size}: ember reads data only in blocks"):
        check_data_block_size(header.metadata)


@pytest.mark.parametrize("block_size", [PAGE, 2 << 20])
def test_the_two_real_block_sizes_are_accepted(block_size: int) -> None:
    check_data_block_size(deserialize_header(v3(1 << 22, block_size=block_size)).metadata)


def test_a_grid_of_billions_of_blocks_is_refused_instead_of_drawn() -> None:
    header = deserialize_header(v3(MAX_DEVICE_SIZE))
    with pytest.raises(UsageError, match="too many to draw one character each"):
        visualize(header.mappings, header.metadata.size, PAGE, 128, {NIL_UUID}, {BUILD})


def test_a_large_but_drawable_grid_is_one_byte_per_block_while_drawn() -> None:
    header = deserialize_header(v3(1 << 36))  # 64 GiB of 4 KiB blocks: 16 Mi characters
    grid = visualize(header.mappings, header.metadata.size, PAGE, 1 << 20, set(), {BUILD})
    assert grid.count("█") == 1 << 24

import os
import uuid
from pathlib import Path

import numpy as np

from ember.header import NIL_UUID
from ember.memory import export_memory, nonzero_blocks

PAGE = 4096
HUGE = 2 << 20
NEW = uuid.UUID("12345678-1234-4234-8234-123456789abc")


def _ram(path: Path, size: int, pages: dict[int, bytes]) -> Path:
    with path.open("wb") as ram:
        ram.truncate(size)
        for offset, data in pages.items():
            ram.seek(offset)
            ram.write(data)
    return path


def test_only_pages_with_a_non_zero_byte_are_dirty(tmp_path: Path) -> None:
    ram = _ram(tmp_path / "ram", 64 * PAGE, {0: b"\x01", 5 * PAGE + 4095: b"\xff", 9 * PAGE: bytes(PAGE)})
    fd = os.open(ram, os.O_RDONLY)
    try:
        assert nonzero_blocks(fd, 64 * PAGE, PAGE).tolist() == [0, 5]
    finally:
        os.close(fd)


def test_exported_memfile_packs_dirty_pages_and_maps_the_rest_to_nil(tmp_path: Path) -> None:
    size = 16 * PAGE
    ram = _ram(
        tmp_path / "ram", size, {3 * PAGE: b"\x33" * PAGE, 7 * PAGE: b"\x77" * PAGE, 8 * PAGE: b"\x88"}
    )
    header = export_memory(ram, size, PAGE, NEW, tmp_path / "memfile")
    data = (tmp_path / "memfile").read_bytes()
    assert data == b"\x33" * PAGE + b"\x77" * PAGE + b"\x88" + bytes(PAGE - 1)
    assert header.metadata.generation == 1
    assert header.metadata.base_build_id == NEW
    for page, (build, storage) in {
        0: (NIL_UUID, None),
        3: (NEW, 0),
        7: (NEW, PAGE),
        8: (NEW, 2 * PAGE),
        9: (NIL_UUID, None),
    }.items():
        resolved = header.resolve(page * PAGE)
        assert resolved.build_id == build
        if storage is not None:
            assert resolved.storage_offset == storage


def test_hugepage_blocks_are_whole_2_mib_blocks(tmp_path: Path) -> None:
    size = 4 * HUGE
    ram = _ram(tmp_path / "ram", size, {HUGE + 123: b"\x01"})
    header = export_memory(ram, size, HUGE, NEW, tmp_path / "memfile")
    assert (tmp_path / "memfile").stat().st_size == HUGE
    assert header.metadata.block_size == HUGE
    assert header.resolve(HUGE).build_id == NEW
    assert header.resolve(2 * HUGE).build_id == NIL_UUID


def test_a_large_sparse_guest_scans_without_reading_holes(tmp_path: Path) -> None:
    size = 1 << 30
    ram = _ram(tmp_path / "ram", size, {512 << 20: np.arange(1024, dtype=np.uint32).tobytes()})
    header = export_memory(ram, size, PAGE, NEW, tmp_path / "memfile")
    assert (tmp_path / "memfile").stat().st_size == PAGE
    assert header.resolve(512 << 20).build_id == NEW

"""Diff packing through the native loop (``ember.block._pack``) against an independently packed file.

Each case writes chosen blocks of a sparse source file with random bytes and packs a dirty
set that also names some holes; the expected diff file is those blocks' bytes (zeros for
holes) joined in ascending block order, built here without any of ember's run logic.
"""

from __future__ import annotations

import os
import random
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from block_devices import BytesDevice, random_image

import ember.block.export as export_module
from ember.block import CowCache, Overlay, _pack, export_diff, pack_blocks
from ember.block.export import KERNEL_COPY_MIN_BYTES
from ember.errors import StorageError
from ember.header import empty_device_header

BLOCK = 4096
HUGE_BLOCK = 2 << 20


@dataclass(frozen=True)
class Pattern:
    """A source file of ``blocks`` blocks, the blocks holding data and the dirty set to pack."""

    block_size: int
    blocks: int
    written: list[int]
    dirty: list[int]


def runs_of(rng: random.Random, blocks: int, count: int, shortest: int, longest: int) -> set[int]:
    chosen: set[int] = set()
    for _ in range(count):
        length = rng.randint(shortest, longest)
        start = rng.randrange(blocks - length)
        chosen.update(range(start, start + length))
    return chosen


def pattern(name: str) -> Pattern:
    rng = random.Random(name)
    long_blocks = KERNEL_COPY_MIN_BYTES // BLOCK
    if name == "single blocks":
        dirty = set(rng.sample(range(5000), 700))  # 2.7 MiB: the pipe fills and drains several times
        return Pattern(BLOCK, 5000, sorted(dirty), sorted(dirty))
    if name == "long runs":
        dirty = runs_of(rng, 6000, 8, long_blocks - 1, 3 * long_blocks) | {0, 5999}
        return Pattern(BLOCK, 6000, sorted(dirty), sorted(dirty))
    if name == "mixed with holes":
        dirty = runs_of(rng, 8000, 60, 1, 2 * long_blocks) | set(rng.sample(range(8000), 400))
        written = [block for block in sorted(dirty) if rng.random() < 0.9]
        return Pattern(BLOCK, 8000, written, sorted(dirty))
    if name == "large offsets":
        blocks = (6 << 30) // BLOCK  # sparse: runs straddle the 4 GiB mark and end at the last block
        edge = (4 << 30) // BLOCK
        dirty = (
            set(range(edge - 3, edge + 2))
            | set(range(edge + 100, edge + 100 + long_blocks + 7))
            | set(range(blocks - 40, blocks))
            | {7, blocks // 2}
        )
        return Pattern(BLOCK, blocks, sorted(dirty), sorted(dirty))
    if name == "empty":
        return Pattern(BLOCK, 100, [3, 4], [])
    if name == "2 MiB blocks":
        dirty = {0, 1, 2, 5, 9, 10, 17, 30, 31}
        return Pattern(HUGE_BLOCK, 32, sorted(dirty - {10}), sorted(dirty))
    raise AssertionError(name)


PATTERNS = ["single blocks", "long runs", "mixed with holes", "large offsets", "empty", "2 MiB blocks"]


def make_source(path: Path, case: Pattern) -> dict[int, bytes]:
    """Write the pattern's blocks into a sparse file at ``path``; returns their contents."""
    rng = random.Random(case.blocks)
    contents = {block: rng.randbytes(case.block_size) for block in case.written}
    with path.open("wb") as out:
        out.truncate(case.blocks * case.block_size)
        for block, data in contents.items():
            out.seek(block * case.block_size)
            out.write(data)
    return contents


def expected_diff(case: Pattern, contents: dict[int, bytes]) -> bytes:
    return b"".join(contents.get(block, bytes(case.block_size)) for block in case.dirty)


def dirty_array(case: Pattern) -> npt.NDArray[np.uint64]:
    return np.array(case.dirty, dtype=np.uint64)


def pack_file(source: Path, case: Pattern, out: Path) -> bytes:
    fd = os.open(source, os.O_RDONLY)
    try:
        pack_blocks(fd, source, dirty_array(case), case.block_size, out)
    finally:
        os.close(fd)
    return out.read_bytes()


@pytest.mark.parametrize("name", PATTERNS)
def test_packed_blocks_match_an_independent_packing(tmp_path: Path, name: str) -> None:
    case = pattern(name)
    contents = make_source(tmp_path / "source", case)
    assert pack_file(tmp_path / "source", case, tmp_path / "out.diff") == expected_diff(case, contents)


def native_pack(source: Path, case: Pattern, out: Path) -> int:
    """Pack with the native loop alone; returns how many bytes of ``out`` it completed."""
    starts, ends = export_module._run_bounds(dirty_array(case))
    offsets, lengths = starts * np.uint64(case.block_size), (ends - starts) * np.uint64(case.block_size)
    source_fd = os.open(source, os.O_RDONLY)
    target_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        return _pack.pack(source_fd, target_fd, offsets, lengths, KERNEL_COPY_MIN_BYTES)
    finally:
        os.close(source_fd)
        os.close(target_fd)


@pytest.mark.parametrize("name", PATTERNS)
def test_the_native_loop_alone_packs_every_run(tmp_path: Path, name: str) -> None:
    case = pattern(name)
    contents = make_source(tmp_path / "source", case)
    expected = expected_diff(case, contents)
    assert native_pack(tmp_path / "source", case, tmp_path / "out.diff") == len(expected)
    assert (tmp_path / "out.diff").read_bytes() == expected


def test_an_overlay_with_2_mib_blocks_exports_its_written_blocks(tmp_path: Path) -> None:
    size = 24 * HUGE_BLOCK
    image = random_image(size // BLOCK, seed=12)
    overlay = Overlay(BytesDevice(image), CowCache.create(tmp_path, "memory", size, HUGE_BLOCK))
    rng = random.Random(13)
    device = bytearray(image)
    for _ in range(12):
        offset, length = rng.randrange(size - 5 * HUGE_BLOCK), rng.randrange(1, 5 * HUGE_BLOCK)
        data = rng.randbytes(length)
        overlay.write_at(data, offset)
        device[offset : offset + length] = data
    dirty = overlay.diff_metadata().dirty.tolist()
    out = tmp_path / "memfile.diff"
    export_diff(overlay, empty_device_header(uuid.uuid4(), size, HUGE_BLOCK), uuid.uuid4(), out)
    overlay.close()
    expected = b"".join(bytes(device[b * HUGE_BLOCK : (b + 1) * HUGE_BLOCK]) for b in dirty)
    assert len(dirty) > 3 and out.read_bytes() == expected


class StopsAt:
    """The native module, but its loop stops after ``stop`` bytes, as it does on any failure."""

    def __init__(self, stop: int) -> None:
        self.stop = stop

    def pack(
        self,
        source_fd: int,
        target_fd: int,
        offsets: npt.NDArray[np.uint64],
        lengths: npt.NDArray[np.uint64],
        kernel_copy_min: int,
    ) -> int:
        ends = np.cumsum(lengths)
        last = int(np.searchsorted(ends, self.stop))
        kept = lengths[: last + 1].copy()
        kept[-1] -= ends[last] - np.uint64(self.stop)
        return _pack.pack(source_fd, target_fd, offsets[: last + 1], kept, kernel_copy_min)


@pytest.mark.parametrize(
    "stop",
    [0, 1, 100 * BLOCK, 100 * BLOCK + 1234, (1 << 20) + 3 * BLOCK, (5 << 20) + 17],
    ids=["at once", "after a byte", "at a block", "inside a block", "a megabyte in", "deep in"],
)
def test_python_finishes_what_the_native_loop_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: int
) -> None:
    case = pattern("mixed with holes")
    contents = make_source(tmp_path / "source", case)
    monkeypatch.setattr(export_module, "_pack", StopsAt(stop))
    assert pack_file(tmp_path / "source", case, tmp_path / "out.diff") == expected_diff(case, contents)


@pytest.mark.parametrize("run_blocks", [3, 2 * KERNEL_COPY_MIN_BYTES // BLOCK], ids=["short run", "long run"])
def test_a_source_shorter_than_its_dirty_blocks_is_reported_as_truncated(
    tmp_path: Path, run_blocks: int
) -> None:
    source = tmp_path / "source"
    rng = random.Random(run_blocks)
    data = rng.randbytes((200 + run_blocks) * BLOCK)
    end = 200 * BLOCK + run_blocks * BLOCK // 2 + 1000  # inside the run starting at block 200
    source.write_bytes(data[:end])
    dirty = [*range(10, 14), *range(100, 150), *range(200, 200 + run_blocks), 200 + run_blocks + 5]
    case = Pattern(BLOCK, dirty[-1] + 1, [], dirty)
    out = tmp_path / "out.diff"
    with pytest.raises(StorageError, match=f"ended at byte {end},.*truncated behind the exporter's back"):
        pack_file(source, case, out)
    before = data[10 * BLOCK : 14 * BLOCK] + data[100 * BLOCK : 150 * BLOCK] + data[200 * BLOCK : end]
    assert out.read_bytes() == before


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a tmpfs at /dev/shm")
def test_long_runs_the_kernel_will_not_copy_across_file_systems_go_through_the_pipe(tmp_path: Path) -> None:
    case = pattern("long runs")
    shared = Path("/dev/shm") / f"ember-pack-test-{uuid.uuid4()}"
    try:
        expected = expected_diff(case, make_source(shared, case))
        assert native_pack(shared, case, tmp_path / "out.diff") == len(expected)
    finally:
        shared.unlink()
    assert (tmp_path / "out.diff").read_bytes() == expected


def test_a_target_that_takes_no_bytes_is_a_storage_error(tmp_path: Path) -> None:
    case = pattern("single blocks")
    make_source(tmp_path / "source", case)
    with pytest.raises(StorageError, match="check free space"):
        pack_file(tmp_path / "source", case, Path("/dev/full"))


def test_without_the_compiled_packer_an_export_asks_for_make_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "_IMPORT_ERROR", ImportError("no _pack module"))
    case = pattern("single blocks")
    make_source(tmp_path / "source", case)
    with pytest.raises(StorageError, match="make setup"):
        pack_file(tmp_path / "source", case, tmp_path / "out.diff")
    assert not (tmp_path / "out.diff").exists()

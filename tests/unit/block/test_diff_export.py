from __future__ import annotations

import errno
import json
import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from block_devices import BLOCK, BytesDevice, open_overlay, random_image

import ember.block.export as export_module
from ember.block import (
    CowCache,
    Overlay,
    ZeroDevice,
    dirty_runs,
    export_diff,
    export_rootfs_build,
)
from ember.build.metadata import TemplateInfo, TemplateMetadata, parse_metadata
from ember.build.reader import BuildFile
from ember.errors import BuildError, StorageError
from ember.header import NIL_UUID, Header, Mapping, MappingTable, Metadata, empty_device_header
from ember.storage import ROOTFS, BuildPaths, LocalStorage

BLOCKS = 16
PARENT = uuid.UUID("11111111-1111-4111-8111-111111111111")
NEW = uuid.UUID("22222222-2222-4222-8222-222222222222")


def parent_header(blocks: int = BLOCKS) -> Header:
    """Generation 3 of a chain whose every block lives in PARENT's data at the same offset."""
    metadata = Metadata(3, BLOCK, blocks * BLOCK, 3, PARENT, uuid.UUID(int=7))
    return Header(metadata, MappingTable.from_records([Mapping(0, blocks * BLOCK, PARENT, 0)]))


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator[Overlay]:
    device = open_overlay(tmp_path, BytesDevice(random_image(BLOCKS, seed=2)))
    yield device
    device.close()


def resolve_block(header: Header, block: int) -> tuple[uuid.UUID, int]:
    resolved = header.resolve(block * BLOCK)
    return resolved.build_id, resolved.storage_offset


def test_one_all_zero_block_exports_as_empty_with_an_empty_diff_file(
    overlay: Overlay, tmp_path: Path
) -> None:
    overlay.write_at(bytes(BLOCK), 0)
    diff = overlay.diff_metadata()
    assert diff.dirty.tolist() == [] and diff.empty.tolist() == [0]
    out = tmp_path / "rootfs.diff"
    header = export_diff(overlay, parent_header(), NEW, out)
    assert out.stat().st_size == 0
    assert resolve_block(header, 0)[0] == NIL_UUID
    assert resolve_block(header, 1) == (PARENT, BLOCK)


def test_zero_written_and_untouched_blocks_map_to_nil_new_and_base(tmp_path: Path) -> None:
    overlay = open_overlay(tmp_path, BytesDevice(random_image(3, seed=4)))
    overlay.write_at(bytes(BLOCK) + b"\xab" * BLOCK, 0)
    out = tmp_path / "rootfs.diff"
    header = export_diff(overlay, parent_header(3), NEW, out)
    diff = overlay.diff_metadata()
    assert diff.empty.tolist() == [0] and diff.dirty.tolist() == [1]
    assert resolve_block(header, 0)[0] == NIL_UUID
    assert resolve_block(header, 1) == (NEW, 0)
    assert resolve_block(header, 2) == (PARENT, 2 * BLOCK)
    assert out.read_bytes() == b"\xab" * BLOCK
    overlay.close()


def test_write_zeroes_after_a_write_reads_zero_and_exports_as_empty(overlay: Overlay, tmp_path: Path) -> None:
    overlay.write_at(b"\x5e" * BLOCK, BLOCK)
    overlay.write_zeroes_at(0, 2 * BLOCK)
    assert overlay.read_at(0, 2 * BLOCK) == bytes(2 * BLOCK)
    header = export_diff(overlay, parent_header(), NEW, tmp_path / "rootfs.diff")
    diff = overlay.diff_metadata()
    assert len(diff.dirty) == 0 and diff.empty.tolist() == [0, 1]
    assert header.resolve(0).build_id == NIL_UUID and header.resolve(0).length == 2 * BLOCK


def test_non_contiguous_dirty_blocks_are_packed_in_ascending_order(overlay: Overlay, tmp_path: Path) -> None:
    overlay.write_at(b"\x22" * BLOCK, 3 * BLOCK)
    overlay.write_at(b"\x11" * BLOCK, 0)
    out = tmp_path / "rootfs.diff"
    header = export_diff(overlay, parent_header(), NEW, out)
    assert out.read_bytes() == b"\x11" * BLOCK + b"\x22" * BLOCK
    assert resolve_block(header, 0) == (NEW, 0)
    assert resolve_block(header, 3) == (NEW, BLOCK)
    assert resolve_block(header, 1) == (PARENT, BLOCK)


def test_the_exported_header_is_the_diff_metadata_laid_over_the_parent(
    overlay: Overlay, tmp_path: Path
) -> None:
    rng = random.Random(5)
    for _ in range(20):
        block = rng.randrange(BLOCKS)
        overlay.write_at(bytes(BLOCK) if rng.random() < 0.3 else rng.randbytes(BLOCK), block * BLOCK)
    parent = parent_header()
    header = export_diff(overlay, parent, NEW, tmp_path / "rootfs.diff")
    assert header == overlay.diff_metadata().to_diff_header(parent, NEW)
    assert header.metadata.generation == parent.metadata.generation + 1
    assert header.metadata.build_id == NEW
    assert header.metadata.base_build_id == parent.metadata.base_build_id
    assert header.pending_upload


MIXED_BLOCKS = 2700


@pytest.fixture
def mixed_runs(tmp_path: Path) -> Iterator[tuple[Overlay, bytes]]:
    """1100 single-block runs (more than one gathered write holds), a 300-block run, a few more
    short runs; returns the overlay and the diff file content expected from it."""
    overlay = open_overlay(tmp_path, BytesDevice(random_image(MIXED_BLOCKS, seed=9)))
    rng = random.Random(10)
    for block in range(0, 2200, 2):
        overlay.write_at(rng.randbytes(BLOCK), block * BLOCK)
    overlay.write_at(rng.randbytes(300 * BLOCK), 2300 * BLOCK)
    overlay.write_at(rng.randbytes(3 * BLOCK), 2650 * BLOCK)
    overlay.write_at(rng.randbytes(BLOCK), 2699 * BLOCK)
    dirty = overlay.diff_metadata().dirty.tolist()
    assert len(dirty) == 1100 + 300 + 3 + 1
    yield overlay, b"".join(overlay.read_at(block * BLOCK, BLOCK) for block in dirty)
    overlay.close()


def mixed_parent() -> Header:
    return parent_header(MIXED_BLOCKS)


class StopsAtOnce:
    """The native packer stopping before its first byte, as it does on a failure."""

    @staticmethod
    def pack(*args: object) -> int:
        return 0


@pytest.fixture
def python_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run packed by the Python writer, whose syscalls these tests watch or break."""
    monkeypatch.setattr(export_module, "_pack", StopsAtOnce)


def test_the_diff_file_holds_every_dirty_block_of_short_and_long_runs(
    python_writer: None, mixed_runs: tuple[Overlay, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overlay, expected = mixed_runs
    calls: list[str] = []
    real_copy, real_pwrite = os.copy_file_range, os.pwrite

    def copy_spy(*args: int) -> int:
        calls.append("copy_file_range")
        return real_copy(*args)

    def pwrite_spy(fd: int, data: memoryview, offset: int) -> int:
        calls.append("pwrite")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "copy_file_range", copy_spy)
    monkeypatch.setattr(os, "pwrite", pwrite_spy)
    out = tmp_path / "rootfs.diff"
    export_diff(overlay, mixed_parent(), NEW, out)
    assert out.read_bytes() == expected
    assert calls.count("copy_file_range") >= 1 and calls.count("pwrite") >= 2


def test_a_small_staging_buffer_gives_the_same_diff(
    python_writer: None, mixed_runs: tuple[Overlay, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overlay, expected = mixed_runs
    monkeypatch.setattr(export_module, "STAGE_BYTES", 3 * BLOCK)
    out = tmp_path / "staged.diff"
    export_diff(overlay, mixed_parent(), NEW, out)
    assert out.read_bytes() == expected


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS])
def test_without_copy_file_range_long_runs_are_staged_too(
    python_writer: None,
    mixed_runs: tuple[Overlay, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
) -> None:
    overlay, expected = mixed_runs
    calls: list[int] = []
    real_copy = os.copy_file_range

    def refuses_after_a_while(source: int, target: int, count: int, *offsets: int) -> int:
        calls.append(count)
        if len(calls) > 1:
            raise OSError(code, os.strerror(code))
        return real_copy(source, target, min(count, 10 * BLOCK), *offsets)

    monkeypatch.setattr(os, "copy_file_range", refuses_after_a_while)
    out = tmp_path / "fallback.diff"
    export_diff(overlay, mixed_parent(), NEW, out)
    assert out.read_bytes() == expected
    assert len(calls) == 2, "after one refusal the kernel is not asked again"


def test_short_reads_and_writes_are_resumed_where_they_stopped(
    python_writer: None, mixed_runs: tuple[Overlay, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overlay, expected = mixed_runs
    real_preadv, real_pwrite = os.preadv, os.pwrite

    def short_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        return real_preadv(fd, [buffers[0][:3000]], offset)

    def short_pwrite(fd: int, data: memoryview, offset: int) -> int:
        return real_pwrite(fd, data[:5000], offset)

    monkeypatch.setattr(os, "preadv", short_preadv)
    monkeypatch.setattr(os, "pwrite", short_pwrite)
    out = tmp_path / "short.diff"
    export_diff(overlay, mixed_parent(), NEW, out)
    assert out.read_bytes() == expected


@pytest.mark.parametrize("call", ["copy_file_range", "pwrite", "preadv"])
def test_a_failing_copy_is_a_storage_error(
    python_writer: None,
    mixed_runs: tuple[Overlay, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    call: str,
) -> None:
    overlay, _ = mixed_runs

    def no_space(*args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, call, no_space)
    with pytest.raises(StorageError, match="free space"):
        export_diff(overlay, mixed_parent(), NEW, tmp_path / "rootfs.diff")


def test_a_parent_of_another_size_is_refused(overlay: Overlay, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="parent header describes"):
        export_diff(overlay, parent_header(BLOCKS * 2), NEW, tmp_path / "rootfs.diff")


def test_dirty_runs_are_maximal_runs_of_consecutive_blocks() -> None:
    blocks = np.array([0, 1, 2, 5, 7, 8], dtype=np.uint64)
    assert dirty_runs(blocks) == [(0, 3), (5, 6), (7, 9)]
    assert dirty_runs(np.array([], dtype=np.uint64)) == []


def test_an_empty_device_header_maps_everything_to_nil_at_generation_zero() -> None:
    header = empty_device_header(NEW, 8 * BLOCK, BLOCK)
    assert header.mappings.records() == [Mapping(0, 8 * BLOCK, NIL_UUID, 0)]
    assert header.metadata.generation == 0
    assert header.metadata.build_id == header.metadata.base_build_id == NEW


def metadata_for(build: uuid.UUID) -> TemplateMetadata:
    return TemplateMetadata(
        version=2, template=TemplateInfo(str(build), "vmlinux-6.1.158", "v1.14.1_431f1fc")
    )


def stored_objects(root: Path, build: uuid.UUID) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((root / str(build)).iterdir())}


def test_a_three_generation_chain_exported_and_stored_reads_back_as_written(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "templates")
    size = 256 * BLOCK
    rng = random.Random(8)
    image = bytearray(size)
    builds = [uuid.uuid4() for _ in range(3)]
    parent: Header = empty_device_header(builds[0], size, BLOCK)
    base: ZeroDevice | BuildFile = ZeroDevice(size)
    snapshots: dict[uuid.UUID, dict[str, bytes]] = {}
    for generation, build in enumerate(builds, start=1):
        overlay = Overlay(base, CowCache.create(tmp_path, f"rootfs-sbx{generation}", size))
        for _ in range(60):
            offset = rng.randrange(size - 8 * BLOCK)
            length = rng.randrange(1, 8 * BLOCK)
            if rng.random() < 0.25:
                overlay.write_zeroes_at(offset, length)
                image[offset : offset + length] = bytes(length)
            else:
                data = rng.randbytes(length)
                overlay.write_at(data, offset)
                image[offset : offset + length] = data
        assert overlay.read_at(0, size) == bytes(image)
        header = export_rootfs_build(
            overlay, parent, storage, build, metadata_for(build), scratch_dir=tmp_path
        )
        overlay.close()
        assert not header.pending_upload
        assert header.metadata.generation == generation
        stored = BuildFile.open(storage, build, ROOTFS)
        assert stored.header.mappings == header.mappings
        assert stored.read_at(0, size) == bytes(image)
        for earlier, objects in snapshots.items():
            assert stored_objects(storage.root, earlier) == objects, "a parent build was modified"
        snapshots[build] = stored_objects(storage.root, build)
        parent, base = header, stored
    stored_metadata = parse_metadata((storage.root / str(builds[-1]) / "metadata.json").read_bytes())
    assert stored_metadata.filesystem_only
    assert stored_metadata.template.build_id == str(builds[-1])
    assert sorted(snapshots[builds[-1]]) == ["metadata.json", "rootfs.ext4", "rootfs.ext4.header"]
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith("ember-export-")] == []


def test_metadata_naming_another_build_is_refused_before_anything_is_stored(
    overlay: Overlay, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "templates")
    overlay.write_at(b"\x01" * BLOCK, 0)
    with pytest.raises(BuildError, match="metadata names build"):
        export_rootfs_build(overlay, parent_header(), storage, NEW, metadata_for(PARENT))
    assert not storage.exists(BuildPaths(NEW).metadata)
    assert storage.list(str(NEW)) == []


def test_an_exported_first_layer_stores_only_non_zero_blocks(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "templates")
    size = 8 * BLOCK
    overlay = Overlay(ZeroDevice(size), CowCache.create(tmp_path, "rootfs-build", size))
    overlay.write_at(b"\x09" * BLOCK + bytes(BLOCK) + b"\x0a" * BLOCK, 2 * BLOCK)
    metadata = replace(metadata_for(NEW), fs_quiesced=True)
    export_rootfs_build(overlay, empty_device_header(NEW, size, BLOCK), storage, NEW, metadata)
    overlay.close()
    assert storage.get(BuildPaths(NEW).data_object(ROOTFS)) == b"\x09" * BLOCK + b"\x0a" * BLOCK
    document = json.loads(storage.get(BuildPaths(NEW).metadata))
    assert document["filesystem_only"] is True and document["fs_quiesced"] is True
    header = BuildFile.open(storage, NEW, ROOTFS).header
    assert [(m.offset // BLOCK, m.length // BLOCK, m.build_id) for m in header.mappings.records()] == [
        (0, 2, NIL_UUID),
        (2, 1, NEW),
        (3, 1, NIL_UUID),
        (4, 1, NEW),
        (5, 3, NIL_UUID),
    ]

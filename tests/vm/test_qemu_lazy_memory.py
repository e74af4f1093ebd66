"""A guest restored with its RAM served lazily from a memfile build, paused into a child build, and
restored again from that child: the counter it keeps in memory goes on across all three runs."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ember.build import BuildArtifacts, BuildFile, TemplateInfo, TemplateMetadata, upload_build
from ember.guest import GuestKernel, busybox_rootfs, make_ext4
from ember.header import PAGE_SIZE, DiffMetadata, Header
from ember.memory import LazyMemory, export_memory, export_memory_diff
from ember.storage import MEMFILE, ROOTFS, BuildPaths, LocalStorage, Storage
from ember.vmm import VmSnapshot
from ember.vmm.qemu import DriveConfig, MachineConfig, MemoryFileConfig, QemuVm

pytestmark = [pytest.mark.vm, pytest.mark.root]

COUNT_IN_MEMORY = """#!/bin/sh
export PATH=/bin
n=0
while true; do n=$((n + 1)); echo "TICK $n"; sleep 0.5; done
"""


def _ticks(console: Path) -> list[int]:
    return [int(n) for n in re.findall(r"^TICK (\d+)", console.read_text(), re.MULTILINE)]


def _metadata(build: uuid.UUID) -> TemplateMetadata:
    return TemplateMetadata(version=2, template=TemplateInfo(str(build), "debian-cloud", "qemu"))


def _store(
    storage: Storage,
    build: uuid.UUID,
    rootfs: tuple[Header, Path],
    memfile: tuple[Header, Path],
    snapfile: Path,
) -> None:
    upload_build(
        storage,
        BuildArtifacts(
            build_id=build,
            metadata=_metadata(build),
            rootfs_header=rootfs[0],
            rootfs_data=rootfs[1],
            memfile_header=memfile[0],
            memfile_data=memfile[1],
            snapfile=snapfile,
        ),
    )


def _snapshot_of(storage: Storage, build: uuid.UUID, memory: LazyMemory, local: Path) -> VmSnapshot:
    storage.get_to_file(BuildPaths(build).snapfile, local)
    return VmSnapshot(state_path=local, memory_path=memory.path, memory_bytes=memory.size)


def test_a_guest_resumes_from_lazily_served_memory_and_pauses_into_a_child_build(
    tmp_path: Path, guest_kernel: GuestKernel, guest_initramfs: Path
) -> None:
    if os.geteuid() != 0 or shutil.which("fusermount3") is None or not Path("/dev/fuse").exists():
        pytest.skip("needs root, /dev/fuse and fusermount3 (Debian package fuse3)")
    image = make_ext4(tmp_path / "rootfs.ext4", 64, busybox_rootfs(tmp_path / "root", COUNT_IN_MEMORY))
    ram = tmp_path / "ram"
    config = MachineConfig(
        kernel_path=guest_kernel.vmlinuz_path,
        initrd_path=guest_initramfs,
        cmdline="console=ttyS0 panic=-1 quiet rootflags=discard",
        drives=(DriveConfig(str(image)),),
        memory_file=MemoryFileConfig(ram, shared=True),
    )
    storage = LocalStorage(tmp_path / "storage")
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    # 1. Cold boot, pause after a few ticks, store RAM + device state as build A (generation 1).
    with QemuVm(config, tmp_path / "boot") as vm:
        vm.boot()
        vm.wait_for_console("TICK 3", timeout_s=120)
        vm.pause()
        vm.snapshot(scratch / "a.snapfile")
        paused_at = max(_ticks(vm.console_path))
    parent = uuid.uuid4()
    memfile_a = export_memory(ram, config.memory_bytes, PAGE_SIZE, parent, scratch / "a.memfile")
    rootfs_a = export_memory(image, image.stat().st_size, PAGE_SIZE, parent, scratch / "a.rootfs")
    _store(
        storage,
        parent,
        (rootfs_a, scratch / "a.rootfs"),
        (memfile_a, scratch / "a.memfile"),
        scratch / "a.snapfile",
    )
    ram.unlink()  # from here on, guest RAM exists only in storage

    # 2. Restore from build A with RAM served lazily; pause and export the dirty pages as build B.
    child = uuid.uuid4()
    with LazyMemory(BuildFile.open(storage, parent, MEMFILE), tmp_path) as memory:
        lazy_config = replace(config, memory_file=MemoryFileConfig(memory.path, shared=True))
        snapshot = _snapshot_of(storage, parent, memory, scratch / "a.restore")
        with QemuVm.restore(lazy_config, snapshot, tmp_path / "restore-a") as vm:
            vm.wait_for_console(f"TICK {paused_at + 2}", timeout_s=60)
            served = memory.stats()
            vm.pause()
            vm.snapshot(scratch / "b.snapfile")
            resumed = _ticks(vm.console_path)
            paused_again_at = max(resumed)
        print(
            f"\nrestore from build A + 2 ticks: {served.base_read_bytes / 2**20:.1f} MiB of "
            f"{config.memory_bytes >> 20} MiB read from the build in {served.base_reads} reads "
            f"({served.reads} FUSE reads); {memory.stats().written_bytes / 2**20:.1f} MiB written back"
        )
        assert resumed[0] == paused_at + 1
        assert 0 < served.base_read_bytes < config.memory_bytes
        memfile_b = export_memory_diff(memory, memfile_a, child, scratch / "b.memfile")
    dirty_pages = (scratch / "b.memfile").stat().st_size // PAGE_SIZE
    print(f"build B: {dirty_pages} dirty pages ({dirty_pages * PAGE_SIZE / 2**20:.1f} MiB)")
    assert memfile_b.metadata.generation == memfile_a.metadata.generation + 1
    assert 0 < dirty_pages < config.memory_bytes // PAGE_SIZE
    (scratch / "b.rootfs").touch()
    unchanged = np.empty(0, dtype=np.uint64)
    rootfs_b = DiffMetadata(unchanged, unchanged, PAGE_SIZE).to_diff_header(rootfs_a, child)
    _store(
        storage,
        child,
        (rootfs_b, scratch / "b.rootfs"),
        (memfile_b, scratch / "b.memfile"),
        scratch / "b.snapfile",
    )
    assert storage.size(BuildPaths(child).data_object(MEMFILE)) == dirty_pages * PAGE_SIZE
    assert storage.exists(BuildPaths(child).header(ROOTFS))

    # 3. Restore from the child build B, lazily again: the counter goes on from where B paused.
    with LazyMemory(BuildFile.open(storage, child, MEMFILE), tmp_path) as memory:
        lazy_config = replace(config, memory_file=MemoryFileConfig(memory.path, shared=True))
        snapshot = _snapshot_of(storage, child, memory, scratch / "b.restore")
        with QemuVm.restore(lazy_config, snapshot, tmp_path / "restore-b") as vm:
            vm.wait_for_console(f"TICK {paused_again_at + 2}", timeout_s=60)
            final = _ticks(vm.console_path)
        print(f"restore from build B: {memory.stats().base_read_bytes / 2**20:.1f} MiB read from the chain")
    assert final[0] == paused_again_at + 1

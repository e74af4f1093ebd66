"""The tiny guest restored with its RAM served by ember's page server from a memfile build, paused
into a child build through a Diff snapshot, and restored again from the child: the counter it
keeps in memory goes on across all three runs."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tiny_guest import MEMORY_MIB, ticks

from ember.build import BuildArtifacts, BuildFile, TemplateInfo, TemplateMetadata, upload_build
from ember.header import PAGE_SIZE, DiffMetadata, Header, empty_device_header
from ember.memory import export_memory
from ember.storage import MEMFILE, BuildPaths, LocalStorage, Storage
from ember.uffd import PageServer, PageState, export_memory_diff_snapshot
from ember.vmm import VmSnapshot
from ember.vmm.firecracker import (
    BootSource,
    FirecrackerConfig,
    FirecrackerVm,
    MachineConfig,
    MemoryBackend,
    MemoryBackendType,
    SnapshotType,
)

pytestmark = pytest.mark.vm

MEMORY_BYTES = MEMORY_MIB << 20


def _store(
    storage: Storage, build: uuid.UUID, memfile: tuple[Header, Path], rootfs: Header, snapfile: Path
) -> None:
    """A build of the tiny guest: its memory, its snapfile, and a rootfs it never reads."""
    empty_rootfs = snapfile.with_name(f"{build}.rootfs")
    empty_rootfs.write_bytes(b"")
    metadata = TemplateMetadata(version=2, template=TemplateInfo(str(build), "tiny-guest", "v1.12.1"))
    upload_build(
        storage,
        BuildArtifacts(build, metadata, rootfs, empty_rootfs, memfile[0], memfile[1], snapfile),
    )


@contextlib.contextmanager
def _restored(
    storage: Storage, build: uuid.UUID, run_dir: Path, firecracker: Path
) -> Iterator[tuple[FirecrackerVm, PageServer]]:
    """Firecracker resumed from ``build`` with every page fault served from its memfile.

    On the way out the VM is stopped before the server closes: a VM whose server went away
    first would wait forever on its next fault.
    """
    run_dir.mkdir()
    state = run_dir / "snapfile"
    storage.get_to_file(BuildPaths(build).snapfile, state)
    with PageServer(BuildFile.open(storage, build, MEMFILE), run_dir / "uffd.sock") as server:
        snapshot = VmSnapshot(state_path=state, memory_path=run_dir / "unused.mem", memory_bytes=MEMORY_BYTES)
        with FirecrackerVm.restore(
            snapshot,
            run_dir / "vm",
            binary=firecracker,
            memory_backend=MemoryBackend(MemoryBackendType.UFFD, server.socket_path),
            enable_diff_snapshots=True,
        ) as vm:
            yield vm, server


def test_a_guest_served_from_a_memfile_build_pauses_into_a_child_build_and_resumes_from_it(
    tmp_path: Path, firecracker: Path, guest: Path
) -> None:
    storage = LocalStorage(tmp_path / "storage")
    config = FirecrackerConfig(
        boot_source=BootSource(guest), machine=MachineConfig(mem_size_mib=MEMORY_MIB), name="tick"
    )
    with FirecrackerVm(config, tmp_path / "boot", binary=firecracker) as vm:
        vm.boot()
        vm.wait_for_console("TICK 2", timeout_s=10)
        vm.pause()
        full = vm.snapshot(tmp_path / "base.snap")
        base_last = ticks(vm.console_path)[-1]

    base = uuid.uuid4()
    base_memfile = export_memory(full.memory_path, MEMORY_BYTES, PAGE_SIZE, base, tmp_path / "base.memfile")
    base_rootfs = empty_device_header(base, PAGE_SIZE, PAGE_SIZE)
    _store(storage, base, (base_memfile, tmp_path / "base.memfile"), base_rootfs, full.state_path)
    full.memory_path.unlink()  # from here on, guest memory exists only in the build

    with _restored(storage, base, tmp_path / "first", firecracker) as (vm, server):
        vm.wait_for_console(f"TICK {base_last + 2}", timeout_s=10)
        vm.pause()
        diff = vm.snapshot(tmp_path / "diff.snap", kind=SnapshotType.DIFF)
        diff_last = ticks(vm.console_path)[-1]
        assert ticks(vm.console_path)[0] == base_last + 1
        stats = server.stats
        assert stats.faults > 0
        assert server.error is None
        # The guest touched a few pages, not its whole RAM: memory really is served lazily.
        assert 0 < server.tracker.page_count - server.tracker.count(PageState.NOT_PRESENT) < 1024
        assert len(server.recorder.prefetch().indices) > 0
        child = uuid.uuid4()
        child_memfile = export_memory_diff_snapshot(
            diff.memory_path, base_memfile, child, tmp_path / "child.memfile", server.tracker
        )
    assert child_memfile.metadata.generation == base_memfile.metadata.generation + 1
    assert 0 < (tmp_path / "child.memfile").stat().st_size < 1 << 20
    empty = np.empty(0, dtype=np.uint64)
    child_rootfs = DiffMetadata(empty, empty, PAGE_SIZE).to_diff_header(base_rootfs, child)
    _store(storage, child, (child_memfile, tmp_path / "child.memfile"), child_rootfs, diff.state_path)

    with _restored(storage, child, tmp_path / "second", firecracker) as (vm, server):
        vm.wait_for_console(f"TICK {diff_last + 2}", timeout_s=10)
        assert ticks(vm.console_path)[:2] == [diff_last + 1, diff_last + 2]
        assert server.error is None
    assert not (tmp_path / "second" / "uffd.sock").exists()

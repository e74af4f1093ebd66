"""Firecracker snapshots of the tiny guest: Full + File restore, Diff merged onto its base."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from tiny_guest import MEMORY_MIB, ticks

from ember.errors import EmberError
from ember.vmm import VmSnapshot, VmState
from ember.vmm.firecracker import (
    BootSource,
    FirecrackerConfig,
    FirecrackerVm,
    MachineConfig,
    SnapshotType,
    data_extents,
    merge_memory_diff,
)

pytestmark = pytest.mark.vm


def _config(guest: Path, *, track_dirty_pages: bool = False) -> FirecrackerConfig:
    machine = MachineConfig(mem_size_mib=MEMORY_MIB, track_dirty_pages=track_dirty_pages)
    return FirecrackerConfig(boot_source=BootSource(guest), machine=machine, name="tick")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _full_snapshot_after_two_ticks(vm: FirecrackerVm, state_path: Path) -> tuple[VmSnapshot, int]:
    vm.boot()
    vm.wait_for_console("TICK 2", timeout_s=10)
    vm.pause()
    return vm.snapshot(state_path), ticks(vm.console_path)[-1]


def test_a_restored_guest_continues_its_count_and_leaves_the_memory_file_unchanged(
    tmp_path: Path, firecracker: Path, guest: Path
) -> None:
    with FirecrackerVm(_config(guest), tmp_path / "run", binary=firecracker) as vm:
        snapshot, last = _full_snapshot_after_two_ticks(vm, tmp_path / "snapfile")
    assert snapshot.memory_path == tmp_path / "snapfile.mem"
    assert snapshot.memory_bytes == MEMORY_MIB << 20
    assert snapshot.memory_path.stat().st_size == MEMORY_MIB << 20
    memory_sha = _sha256(snapshot.memory_path)
    with FirecrackerVm.restore(snapshot, tmp_path / "restored", binary=firecracker) as restored:
        restored.wait_for_console(f"TICK {last + 2}", timeout_s=10)
        assert ticks(restored.console_path)[:2] == [last + 1, last + 2]
    assert _sha256(snapshot.memory_path) == memory_sha


def test_a_guest_restored_paused_waits_for_resume(tmp_path: Path, firecracker: Path, guest: Path) -> None:
    with FirecrackerVm(_config(guest), tmp_path / "run", binary=firecracker) as vm:
        snapshot, last = _full_snapshot_after_two_ticks(vm, tmp_path / "snapfile")
    with FirecrackerVm.restore(snapshot, tmp_path / "restored", binary=firecracker, resume=False) as restored:
        assert restored.state is VmState.PAUSED
        assert ticks(restored.console_path) == []
        restored.resume()
        assert restored.wait_for_console(f"TICK {last + 1}", timeout_s=10) == f"TICK {last + 1}"


def _restore_merged(base: VmSnapshot, diff: VmSnapshot, run_dir: Path, firecracker: Path) -> int:
    """Merge ``diff`` onto a copy of ``base``'s memory, restore that; the first count printed."""
    dirty_bytes = sum(length for _, length in data_extents(diff.memory_path))
    assert diff.memory_path.stat().st_size == base.memory_bytes
    assert 0 < dirty_bytes < 1 << 20  # a few pages per tick, not the whole RAM
    merged_path = run_dir.with_suffix(".mem")
    shutil.copyfile(base.memory_path, merged_path)
    assert merge_memory_diff(diff.memory_path, merged_path) == dirty_bytes
    merged = VmSnapshot(diff.state_path, merged_path, diff.memory_bytes)
    with FirecrackerVm.restore(merged, run_dir, binary=firecracker) as restored:
        restored.wait_for_console("TICK", timeout_s=10)
        return ticks(restored.console_path)[0]


def test_a_diff_taken_after_a_restore_merged_onto_its_base_continues_the_count(
    tmp_path: Path, firecracker: Path, guest: Path
) -> None:
    with FirecrackerVm(_config(guest), tmp_path / "run", binary=firecracker) as vm:
        base, base_last = _full_snapshot_after_two_ticks(vm, tmp_path / "base.snap")
    with FirecrackerVm.restore(
        base, tmp_path / "middle", binary=firecracker, enable_diff_snapshots=True
    ) as middle:
        middle.wait_for_console(f"TICK {base_last + 2}", timeout_s=10)
        middle.pause()
        diff = middle.snapshot(tmp_path / "diff.snap", kind=SnapshotType.DIFF)
        diff_last = ticks(middle.console_path)[-1]
    assert _restore_merged(base, diff, tmp_path / "restored", firecracker) == diff_last + 1


def test_a_diff_of_a_cold_booted_guest_with_dirty_tracking_merges_and_continues_the_count(
    tmp_path: Path, firecracker: Path, guest: Path
) -> None:
    with FirecrackerVm(_config(guest, track_dirty_pages=True), tmp_path / "run", binary=firecracker) as vm:
        base, base_last = _full_snapshot_after_two_ticks(vm, tmp_path / "base.snap")
        vm.resume()
        vm.wait_for_console(f"TICK {base_last + 1}", timeout_s=10)
        vm.pause()
        diff = vm.snapshot(tmp_path / "diff.snap", kind=SnapshotType.DIFF)
        diff_last = ticks(vm.console_path)[-1]
    assert _restore_merged(base, diff, tmp_path / "restored", firecracker) == diff_last + 1


def test_a_diff_snapshot_without_dirty_tracking_is_refused_with_firecrackers_reason(
    tmp_path: Path, firecracker: Path, guest: Path
) -> None:
    with FirecrackerVm(_config(guest), tmp_path / "run", binary=firecracker) as vm:
        vm.boot()
        vm.wait_for_console("TICK 1", timeout_s=10)
        vm.pause()
        with pytest.raises(EmberError, match="Firecracker refused PUT /snapshot/create") as caught:
            vm.snapshot(tmp_path / "diff.snap", kind=SnapshotType.DIFF)
        assert "dirty page tracking disabled" in str(caught.value)
        assert vm.state is VmState.PAUSED
        vm.resume()
        vm.wait_for_console("TICK 2", timeout_s=10)

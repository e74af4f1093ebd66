from __future__ import annotations

from pathlib import Path

import pytest

from ember.errors import EmberError
from ember.vmm import Vm, VmState
from ember.vmm.base import require_state
from ember.vmm.qemu import Accel, MachineConfig, QemuVm


def test_a_state_mismatch_names_the_state_and_what_is_needed() -> None:
    with pytest.raises(EmberError, match="cannot snapshot VM box: it is running, snapshot needs it paused"):
        require_state("box", VmState.RUNNING, "snapshot", VmState.PAUSED)


def test_an_allowed_state_passes() -> None:
    require_state("box", VmState.PAUSED, "resume", VmState.PAUSED)


def test_a_vm_not_yet_booted_cannot_pause_and_stops_cleanly(tmp_path: Path) -> None:
    vm = QemuVm(MachineConfig(Path("/nonexistent/vmlinuz"), ""), tmp_path, accel=Accel.TCG)
    assert vm.state is VmState.CREATED
    with pytest.raises(EmberError, match="it is created, pause needs it running"):
        vm.pause()
    assert vm.state is VmState.CREATED
    assert vm.stop() == 0
    assert vm.state is VmState.STOPPED


def test_a_qemu_that_cannot_start_reports_its_own_error_and_leaves_no_process(tmp_path: Path) -> None:
    vm = QemuVm(MachineConfig(tmp_path / "no-kernel", ""), tmp_path / "run", accel=Accel.TCG)
    with pytest.raises(EmberError, match="QEMU did not come up") as caught:
        vm.boot()
    assert "no-kernel" in str(caught.value)
    assert vm.state is VmState.STOPPED


def test_the_qemu_driver_implements_the_vm_interface(tmp_path: Path) -> None:
    vm: Vm = QemuVm(MachineConfig(Path("/nonexistent/vmlinuz"), ""), tmp_path, accel=Accel.TCG)
    assert isinstance(vm, Vm)
    assert vm.console_path == tmp_path / "console.log"

"""Which VMM ``auto`` picks on a host, and what an explicit request does."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.errors import UsageError
from ember.vmm.select import VmmName, choose_vmm


@pytest.fixture
def dev_kvm(tmp_path: Path) -> Path:
    path = tmp_path / "kvm"
    path.write_bytes(b"")
    return path


@pytest.fixture
def sys_module(tmp_path: Path) -> Path:
    path = tmp_path / "module"
    path.mkdir()
    return path


def test_auto_picks_firecracker_where_kvm_runs_linux(dev_kvm: Path, sys_module: Path) -> None:
    choice = choose_vmm("auto", dev_kvm=dev_kvm, sys_module=sys_module)
    assert choice.name is VmmName.FIRECRACKER
    assert "usable" in choice.reason


def test_auto_picks_qemu_on_a_pvm_host_and_says_why(dev_kvm: Path, sys_module: Path) -> None:
    (sys_module / "kvm_pvm").mkdir()
    choice = choose_vmm(dev_kvm=dev_kvm, sys_module=sys_module)
    assert choice.name is VmmName.QEMU
    assert "PVM" in choice.reason


def test_auto_picks_qemu_without_dev_kvm(tmp_path: Path, sys_module: Path) -> None:
    choice = choose_vmm("auto", dev_kvm=tmp_path / "no-kvm", sys_module=sys_module)
    assert choice.name is VmmName.QEMU
    assert "no-kvm does not exist" in choice.reason


def test_qemu_is_honoured_even_where_firecracker_would_run(dev_kvm: Path, sys_module: Path) -> None:
    assert choose_vmm("qemu", dev_kvm=dev_kvm, sys_module=sys_module).name is VmmName.QEMU


def test_firecracker_on_a_pvm_host_is_honoured_with_a_warning(dev_kvm: Path, sys_module: Path) -> None:
    (sys_module / "kvm_pvm").mkdir()
    choice = choose_vmm("firecracker", dev_kvm=dev_kvm, sys_module=sys_module)
    assert choice.name is VmmName.FIRECRACKER
    assert "only toy guests" in choice.reason


def test_firecracker_without_dev_kvm_is_a_usage_error(tmp_path: Path, sys_module: Path) -> None:
    with pytest.raises(
        UsageError, match=r"firecracker needs read/write access to .*no-kvm.*use the qemu VMM"
    ):
        choose_vmm("firecracker", dev_kvm=tmp_path / "no-kvm", sys_module=sys_module)


def test_an_unknown_vmm_name_lists_the_choices() -> None:
    with pytest.raises(UsageError, match="unknown VMM 'xen': use one of auto, firecracker, qemu"):
        choose_vmm("xen")

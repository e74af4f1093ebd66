"""Firecracker boots the tiny guest, pauses and resumes it, and attaches a drive, vsock and tap."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_guest import MEMORY_MIB, READY_MARKER, ticks

from ember.errors import EmberError
from ember.vmm import Vm, VmState
from ember.vmm.firecracker import (
    BootSource,
    Drive,
    FirecrackerConfig,
    FirecrackerVm,
    MachineConfig,
    MmdsConfig,
    NetworkInterface,
    Vsock,
)

pytestmark = pytest.mark.vm


def _config(guest: Path, **devices: object) -> FirecrackerConfig:
    return FirecrackerConfig(
        boot_source=BootSource(guest),
        machine=MachineConfig(mem_size_mib=MEMORY_MIB),
        name="tick",
        **devices,  # type: ignore[arg-type]
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_tiny_guest_boots_and_prints_ticks_and_stop_leaves_nothing_behind(
    tmp_path: Path, firecracker: Path, guest: Path
) -> None:
    vm = FirecrackerVm(_config(guest), tmp_path / "run", binary=firecracker)
    assert isinstance(vm, Vm)
    with vm:
        vm.boot()
        assert vm.state is VmState.RUNNING
        assert vm.wait_for_console(READY_MARKER, timeout_s=10) == READY_MARKER
        assert vm.wait_for_console("TICK 2", timeout_s=10) == "TICK 2"
        pid = vm.pid
        assert pid is not None
        assert (tmp_path / "run" / "firecracker.sock").exists()
    assert vm.state is VmState.STOPPED
    assert not _alive(pid)
    assert not (tmp_path / "run" / "firecracker.sock").exists()
    assert ticks(vm.console_path)[:2] == [1, 2]


def test_a_paused_guest_stops_ticking_until_it_is_resumed(
    tmp_path: Path, firecracker: Path, guest: Path
) -> None:
    with FirecrackerVm(_config(guest), tmp_path / "run", binary=firecracker) as vm:
        vm.boot()
        vm.wait_for_console("TICK 2", timeout_s=10)
        vm.pause()
        assert vm.state is VmState.PAUSED
        paused_at = ticks(vm.console_path)
        time.sleep(1.2)  # three tick periods
        assert ticks(vm.console_path) == paused_at
        vm.resume()
        assert vm.state is VmState.RUNNING
        vm.wait_for_console(f"TICK {paused_at[-1] + 1}", timeout_s=10)
    assert ticks(vm.console_path) == list(range(1, len(ticks(vm.console_path)) + 1))


def test_a_drive_firecracker_cannot_open_fails_the_boot_with_its_reason_and_no_process_left(
    tmp_path: Path, firecracker: Path, guest: Path
) -> None:
    missing = tmp_path / "missing.img"
    vm = FirecrackerVm(
        _config(guest, drives=(Drive("rootfs", missing),)), tmp_path / "run", binary=firecracker
    )
    with pytest.raises(EmberError, match="Firecracker refused PUT /drives/rootfs") as caught:
        vm.boot()
    assert str(missing) in str(caught.value)
    assert vm.state is VmState.STOPPED
    assert vm.pid is not None and not _alive(vm.pid)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root")
    name = f"ember-fc-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for command in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"],
        ):
            subprocess.run(["ip", "netns", "exec", name, *command], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def test_a_guest_with_a_drive_vsock_and_tap_in_a_netns_boots_and_survives_a_restore(
    tmp_path: Path, firecracker: Path, guest: Path, netns: str
) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\xab" * (1 << 20))
    vsock_path = tmp_path / "vsock.sock"
    config = _config(
        guest,
        drives=(Drive("rootfs", disk, is_root_device=True),),
        network_interfaces=(NetworkInterface("eth0", "tap0", guest_mac="02:FC:00:00:00:05"),),
        mmds=MmdsConfig(("eth0",)),
        vsock=Vsock(3, vsock_path),
    )
    with FirecrackerVm(config, tmp_path / "run", binary=firecracker, netns=netns) as vm:
        vm.boot()
        vm.wait_for_console("TICK 2", timeout_s=10)
        held = vm.api.vm_config()
        assert [d["path_on_host"] for d in held["drives"]] == [str(disk)]
        assert [(n["iface_id"], n["host_dev_name"]) for n in held["network-interfaces"]] == [("eth0", "tap0")]
        assert held["vsock"]["uds_path"] == str(vsock_path)
        assert vsock_path.exists()
        vm.pause()
        snapshot = vm.snapshot(tmp_path / "snapfile")
        before = ticks(vm.console_path)[-1]
    assert not vsock_path.exists()
    with FirecrackerVm.restore(snapshot, tmp_path / "restored", binary=firecracker, netns=netns) as restored:
        assert restored.state is VmState.RUNNING
        assert restored.wait_for_console(f"TICK {before + 1}", timeout_s=10) == f"TICK {before + 1}"
        assert vsock_path.exists()
    assert not vsock_path.exists()
    assert not (tmp_path / "restored" / "firecracker.sock").exists()

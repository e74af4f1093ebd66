"""A Debian kernel boots a busybox rootfs under QEMU, and a paused guest survives a restore."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import pytest
from ext4_files import debugfs_read

from ember.guest import GuestKernel, busybox_rootfs, make_ext4
from ember.vmm import VmState
from ember.vmm.qemu import DriveConfig, MachineConfig, MemoryFileConfig, QemuVm

pytestmark = pytest.mark.vm

WRITE_AND_POWER_OFF = """#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
echo "written by the guest" > /from-guest.txt
grep ' / ' /proc/mounts >> /from-guest.txt
sync
echo "EMBER-TEST-DONE"
poweroff -f
"""

COUNT_FOREVER = """#!/bin/sh
export PATH=/bin
n=0
while true; do n=$((n + 1)); echo "TICK $n"; sleep 0.3; done
"""


def _config(kernel: GuestKernel, initramfs: Path, image: Path, **changes: object) -> MachineConfig:
    config = MachineConfig(
        kernel_path=kernel.vmlinuz_path,
        initrd_path=initramfs,
        cmdline="console=ttyS0 panic=-1 quiet rootflags=discard",
        drives=(DriveConfig(str(image)),),
    )
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def test_guest_boots_from_an_ext4_file_writes_to_it_and_powers_off(
    tmp_path: Path, guest_kernel: GuestKernel, guest_initramfs: Path
) -> None:
    image = make_ext4(tmp_path / "rootfs.ext4", 64, busybox_rootfs(tmp_path / "root", WRITE_AND_POWER_OFF))
    assert debugfs_read(image, "/from-guest.txt") is None
    with QemuVm(_config(guest_kernel, guest_initramfs, image), tmp_path / "run") as vm:
        vm.boot()
        assert vm.wait_for_console("EMBER-TEST-DONE", timeout_s=120) == "EMBER-TEST-DONE"
        assert vm.wait_exit(timeout_s=60) == 0
        assert vm.state is VmState.STOPPED
    console = vm.console_path.read_text()
    assert "EMBER-INITRAMFS-OK root=/dev/vda init=/sbin/init" in console
    written = debugfs_read(image, "/from-guest.txt")
    assert written is not None
    first, mount = written.splitlines()
    assert first == "written by the guest"
    assert mount.startswith("/dev/vda / ext4 rw,")
    assert "discard" in mount.split()[3].split(",")


def _last_tick(console: Path) -> int:
    return max(int(n) for n in re.findall(r"^TICK (\d+)", console.read_text(), re.MULTILINE))


def test_a_paused_guest_continues_counting_after_snapshot_and_restore(
    tmp_path: Path, guest_kernel: GuestKernel, guest_initramfs: Path
) -> None:
    image = make_ext4(tmp_path / "rootfs.ext4", 64, busybox_rootfs(tmp_path / "root", COUNT_FOREVER))
    memory = tmp_path / "memfile"
    config = _config(guest_kernel, guest_initramfs, image, memory_file=MemoryFileConfig(memory, shared=True))
    with QemuVm(config, tmp_path / "run") as vm:
        vm.boot()
        vm.wait_for_console("TICK 2", timeout_s=120)
        vm.pause()
        assert vm.state is VmState.PAUSED
        snapshot = vm.snapshot(tmp_path / "snapfile")
        assert vm.state is VmState.PAUSED
        paused_at = _last_tick(vm.console_path)
    assert snapshot.memory_path == memory
    assert snapshot.memory_bytes == memory.stat().st_size == 256 << 20
    memory_digest = hashlib.sha256(memory.read_bytes()).hexdigest()

    copy_on_write = dataclasses.replace(config, memory_file=MemoryFileConfig(memory, shared=False))
    with QemuVm.restore(copy_on_write, snapshot, tmp_path / "restored") as restored:
        assert restored.state is VmState.RUNNING
        assert restored.wait_for_console(f"TICK {paused_at + 2}", timeout_s=30) == f"TICK {paused_at + 2}"
    assert not re.search(r"^TICK 1$", restored.console_path.read_text(), re.MULTILINE)
    assert hashlib.sha256(memory.read_bytes()).hexdigest() == memory_digest

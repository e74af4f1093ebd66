"""An NBD export as a local block device: nbdfuse + loop here, /dev/nbdN where the module is loaded."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbd_disks import FileDisk, need, run

from ember.nbd import (
    AttachMethod,
    NbdError,
    NbdServerThread,
    attach_export,
    attach_fuse,
    attach_kernel,
    kernel_nbd_available,
)

SIZE = 64 << 20

pytestmark = pytest.mark.root


@pytest.fixture
def workdir() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, FUSE and mounts)")
    with tempfile.TemporaryDirectory(prefix="nbd-attach-", dir="/tmp") as tmp:
        yield Path(tmp)


def mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines() if str(path) in line]


def loop_devices() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout


def test_fuse_attach_mkfs_mount_write_then_detach_leaves_nothing(workdir: Path) -> None:
    need("nbdfuse", "losetup", "fusermount3", "mkfs.ext4", "mount", "debugfs")
    if kernel_nbd_available():
        pytest.skip("the nbd module is loaded: attach_export would take the kernel path")
    image = workdir / "disk.img"
    image.write_bytes(bytes(SIZE))
    disk = FileDisk(image)
    mount_point = workdir / "m"
    mount_point.mkdir()
    try:
        with NbdServerThread(disk, workdir / "s.sock") as server:
            with attach_export(server, work_dir=workdir) as device:
                assert device.method is AttachMethod.FUSE
                assert str(device.path).startswith("/dev/loop")
                run("mkfs.ext4", "-q", "-F", str(device.path))
                run("mount", str(device.path), str(mount_point))
                try:
                    (mount_point / "hello.txt").write_text("written through nbd\n")
                finally:
                    run("umount", str(mount_point))
            assert server.unhandled_errors == ()
    finally:
        disk.close()
    assert mounts_under(workdir) == []
    assert str(workdir) not in loop_devices()
    assert not list(workdir.glob("ember-nbdfuse-*"))
    assert image.read_bytes()[0x438:0x43A] == b"\x53\xef"
    assert run("debugfs", "-R", "cat /hello.txt", str(image)).strip() == "written through nbd"


def test_fuse_attach_of_a_dead_url_fails_and_cleans_up(workdir: Path) -> None:
    need("nbdfuse", "losetup", "fusermount3")
    with pytest.raises(NbdError, match="nbdfuse could not serve"):
        attach_fuse(f"nbd+unix:///?socket={workdir}/nothing.sock", work_dir=workdir)
    assert mounts_under(workdir) == []
    assert not list(workdir.glob("ember-nbdfuse-*"))


def test_kernel_attach(workdir: Path) -> None:
    if not kernel_nbd_available():
        pytest.skip(
            "kernel NBD module not loaded (CONFIG_BLK_DEV_NBD): /sys/module/nbd is missing; modprobe nbd"
        )
    image = workdir / "disk.img"
    image.write_bytes(bytes(SIZE))
    disk = FileDisk(image)
    try:
        with NbdServerThread(disk, workdir / "s.sock") as server, attach_kernel(server) as device:
            assert device.method is AttachMethod.KERNEL
            with open(device.path, "r+b", buffering=0) as block:
                block.write(b"kernel")
                os.fsync(block.fileno())
    finally:
        disk.close()
    assert image.read_bytes()[:6] == b"kernel"

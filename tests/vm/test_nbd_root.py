"""A guest's root disk served from a build over ember's NBD server, paused into a diff build.

The whole create/resume/pause rootfs path in one boot: a build's rootfs (first layer,
exported from an overlay over zeros) is the base of a copy-on-write overlay; QEMU's NBD
client mounts it as /dev/vda; the guest writes a file and powers off; the overlay is
exported as generation + 1. The new build shows the file, its parent does not.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from ext4_files import debugfs_read

from ember.block import export_rootfs_build
from ember.build.metadata import TemplateInfo, TemplateMetadata
from ember.build.reader import BuildFile
from ember.guest import GuestKernel, busybox_rootfs, make_ext4
from ember.sandbox import ServedRootfs, store_image_build
from ember.storage import ROOTFS, LocalStorage
from ember.vmm.qemu import DriveConfig, MachineConfig, QemuVm

pytestmark = pytest.mark.vm

ROOTFS_MIB = 64
BLOCK = 4096
CHUNK = 1 << 20

WRITE_AND_POWER_OFF = """#!/bin/sh
export PATH=/bin
echo "paused into a diff build" > /sandbox-note.txt
sync
echo "EMBER-TEST-DONE"
poweroff -f
"""


def _metadata(build: uuid.UUID, kernel: GuestKernel) -> TemplateMetadata:
    return TemplateMetadata(version=2, template=TemplateInfo(str(build), kernel.version, "qemu-7.2"))


def _flat(storage: LocalStorage, build: uuid.UUID, target: Path) -> Path:
    device = BuildFile.open(storage, build, ROOTFS)
    with target.open("wb") as out:
        for offset in range(0, device.size, CHUNK):
            out.write(device.read_at(offset, min(CHUNK, device.size - offset)))
    return target


def test_guest_writes_on_an_nbd_root_become_a_diff_build(
    tmp_path: Path, guest_kernel: GuestKernel, guest_initramfs: Path
) -> None:
    storage = LocalStorage(tmp_path / "templates")
    parent, child = uuid.uuid4(), uuid.uuid4()
    image = make_ext4(
        tmp_path / "rootfs.ext4", ROOTFS_MIB, busybox_rootfs(tmp_path / "root", WRITE_AND_POWER_OFF)
    )
    parent_header = store_image_build(image, storage, parent, _metadata(parent, guest_kernel), tmp_path)

    base = BuildFile.open(storage, parent, ROOTFS)
    with ServedRootfs(base, tmp_path, "rootfs-sandbox", base.block_size) as rootfs:
        config = MachineConfig(
            kernel_path=guest_kernel.vmlinuz_path,
            initrd_path=guest_initramfs,
            cmdline="console=ttyS0 panic=-1 quiet rootflags=discard",
            drives=(DriveConfig(rootfs.url),),
        )
        with QemuVm(config, tmp_path / "run") as vm:
            vm.boot()
            vm.wait_for_console("EMBER-TEST-DONE", timeout_s=120)
            assert vm.wait_exit(timeout_s=60) == 0
        assert rootfs.server.unhandled_errors == ()
        child_header = export_rootfs_build(
            rootfs.overlay, parent_header, storage, child, _metadata(child, guest_kernel), tmp_path
        )

    assert child_header.metadata.generation == parent_header.metadata.generation + 1
    assert child_header.metadata.base_build_id == parent_header.metadata.base_build_id
    assert {parent, child} <= set(child_header.referenced_builds())
    assert debugfs_read(_flat(storage, child, tmp_path / "child.ext4"), "/sandbox-note.txt") == (
        "paused into a diff build\n"
    )
    assert debugfs_read(_flat(storage, parent, tmp_path / "parent.ext4"), "/sandbox-note.txt") is None

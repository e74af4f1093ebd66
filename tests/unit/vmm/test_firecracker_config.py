"""Request bodies encode exactly the fields Firecracker 1.12 accepts."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ember.vmm.firecracker import (
    BootSource,
    Drive,
    HugePages,
    IoEngine,
    MachineConfig,
    MemoryBackend,
    MemoryBackendType,
    Metrics,
    MmdsConfig,
    MmdsMetadata,
    NetworkInterface,
    SnapshotCreate,
    SnapshotLoad,
    SnapshotType,
    Vsock,
)


def test_optional_fields_left_unset_are_omitted_so_firecracker_applies_its_defaults() -> None:
    assert BootSource(Path("/k/vmlinux.bin")).to_json() == {"kernel_image_path": "/k/vmlinux.bin"}
    assert NetworkInterface("eth0", "tap0").to_json() == {"iface_id": "eth0", "host_dev_name": "tap0"}
    assert Drive("rootfs", Path("/fc-vm/rootfs.ext4")).to_json() == {
        "drive_id": "rootfs",
        "path_on_host": "/fc-vm/rootfs.ext4",
        "is_root_device": False,
        "is_read_only": False,
    }


def test_every_field_set_is_encoded_with_firecrackers_names_and_values() -> None:
    assert BootSource(Path("/k"), "console=ttyS0 quiet", Path("/i.cpio")).to_json() == {
        "kernel_image_path": "/k",
        "boot_args": "console=ttyS0 quiet",
        "initrd_path": "/i.cpio",
    }
    assert Drive(
        "rootfs", Path("/r"), is_root_device=True, is_read_only=True, io_engine=IoEngine.SYNC
    ).to_json() == {
        "drive_id": "rootfs",
        "path_on_host": "/r",
        "is_root_device": True,
        "is_read_only": True,
        "io_engine": "Sync",
    }
    assert NetworkInterface("eth0", "tap0", "02:FC:00:00:00:05").to_json()["guest_mac"] == "02:FC:00:00:00:05"
    assert Vsock(3, Path("/run/v.sock")).to_json() == {"guest_cid": 3, "uds_path": "/run/v.sock"}
    assert Metrics(Path("/run/metrics.fifo")).to_json() == {"metrics_path": "/run/metrics.fifo"}
    assert MmdsConfig(("eth0",)).to_json() == {"version": "V2", "network_interfaces": ["eth0"]}


def test_machine_config_carries_dirty_tracking_and_huge_pages() -> None:
    machine = MachineConfig(vcpu_count=2, mem_size_mib=512, smt=True, track_dirty_pages=True)
    assert machine.to_json() == {"vcpu_count": 2, "mem_size_mib": 512, "smt": True, "track_dirty_pages": True}
    assert machine.memory_bytes == 512 << 20
    assert MachineConfig(huge_pages=HugePages.SIZE_2M).to_json()["huge_pages"] == "2M"


def test_snapshot_create_names_its_type_and_both_files() -> None:
    body = SnapshotCreate(Path("/s/snapfile"), Path("/s/memfile"), SnapshotType.DIFF).to_json()
    assert body == {"snapshot_type": "Diff", "snapshot_path": "/s/snapfile", "mem_file_path": "/s/memfile"}
    assert SnapshotCreate(Path("/a"), Path("/b")).to_json()["snapshot_type"] == "Full"


def test_snapshot_load_uses_a_memory_backend_and_never_sends_track_dirty_pages() -> None:
    file_load = SnapshotLoad(Path("/s/snapfile"), MemoryBackend(MemoryBackendType.FILE, Path("/s/memfile")))
    assert file_load.to_json() == {
        "snapshot_path": "/s/snapfile",
        "mem_backend": {"backend_type": "File", "backend_path": "/s/memfile"},
        "enable_diff_snapshots": False,
        "resume_vm": False,
    }
    uffd = MemoryBackend(MemoryBackendType.UFFD, Path("/run/uffd.sock"))
    body = SnapshotLoad(Path("/s"), uffd, enable_diff_snapshots=True, resume_vm=True).to_json()
    assert body["mem_backend"] == {"backend_type": "Uffd", "backend_path": "/run/uffd.sock"}
    assert (body["enable_diff_snapshots"], body["resume_vm"]) == (True, True)
    assert "track_dirty_pages" not in body


def test_mmds_metadata_uses_the_seeds_json_names_and_hashes_the_token() -> None:
    body = MmdsMetadata("sbx-1", "tpl-1", access_token="secret").to_json()
    assert body == {
        "instanceID": "sbx-1",
        "envID": "tpl-1",
        "address": "http://192.0.2.1/logs",
        "accessTokenHash": hashlib.sha512(b"secret").hexdigest(),
    }


def test_mmds_metadata_without_a_token_hashes_the_empty_string() -> None:
    empty_sha512 = (
        "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
        "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
    )
    assert MmdsMetadata("sbx-1", "tpl-1").to_json()["accessTokenHash"] == empty_sha512

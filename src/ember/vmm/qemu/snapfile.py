"""ember's QEMU snapfile: a self-describing header, then QEMU's migration stream.

QEMU restores a migration stream only into a machine built exactly like the one that
saved it (memory size, vCPUs, devices, their order), and the stream does not say what that
machine was. Firecracker's snapfile carries its VM config; to give a QEMU build the same
property, the snapfile starts with the machine it was saved from::

    EMBER-QEMU-SNAPFILE 1\\n
    {"memory_mib": 512, "vcpu_count": 2, "cmdline": "...", "drive_ids": ["rootfs"], ...}\\n
    <QEMU migration stream, x-ignore-shared: device and CPU state only, no guest RAM>

Restore feeds QEMU the bytes after the header (``tail -c +N``), so the stream is never copied.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ember.errors import VmError
from ember.vmm.qemu.config import DriveConfig, MachineConfig, MemoryFileConfig, NicConfig, qemu_version

MAGIC = b"EMBER-QEMU-SNAPFILE 1\n"
_MAX_HEADER_BYTES = 64 << 10


@dataclass(frozen=True)
class SavedMachine:
    """What a restore must rebuild: everything but host paths, which may differ on resume."""

    memory_mib: int
    vcpu_count: int
    cmdline: str
    drive_ids: tuple[str, ...]
    nic_macs: tuple[str, ...]
    qemu_version: str
    fw_cfg_names: tuple[str, ...] = ()
    """fw_cfg files the machine had (snapfiles older than this field had none)."""


def write_header(path: Path, machine: SavedMachine) -> None:
    """Start ``path`` with the header; the migration stream is appended after it."""
    record = json.dumps(asdict(machine), separators=(",", ":")).encode()
    path.write_bytes(MAGIC + record + b"\n")


def read_header(path: Path) -> tuple[SavedMachine, int]:
    """The saved machine and the byte offset where the migration stream starts."""
    try:
        with path.open("rb") as source:
            head = source.read(_MAX_HEADER_BYTES)
    except OSError as exc:
        raise VmError(f"cannot read snapfile {path}: {exc}") from exc
    if not head.startswith(MAGIC):
        raise VmError(
            f"{path} is not an ember QEMU snapfile (it may be a Firecracker snapshot): "
            "resume it with the VMM that created it"
        )
    end = head.find(b"\n", len(MAGIC))
    if end < 0:
        raise VmError(f"snapfile {path} has a truncated header: the build is corrupt")
    try:
        fields = json.loads(head[len(MAGIC) : end])
        machine = SavedMachine(
            memory_mib=int(fields["memory_mib"]),
            vcpu_count=int(fields["vcpu_count"]),
            cmdline=str(fields["cmdline"]),
            drive_ids=tuple(fields["drive_ids"]),
            nic_macs=tuple(fields["nic_macs"]),
            qemu_version=str(fields["qemu_version"]),
            fw_cfg_names=tuple(str(name) for name in fields.get("fw_cfg_names", ())),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise VmError(f"snapfile {path} has an unreadable header ({exc}): the build is corrupt") from exc
    return machine, end + 1


def saved_machine(config: MachineConfig) -> SavedMachine:
    """What of ``config`` a restore must reproduce."""
    return SavedMachine(
        memory_mib=config.memory_mib,
        vcpu_count=config.vcpu_count,
        cmdline=config.cmdline,
        drive_ids=tuple(drive.drive_id for drive in config.drives),
        nic_macs=tuple(nic.mac for nic in config.nics),
        qemu_version=qemu_version(),
        fw_cfg_names=tuple(name for name, _ in config.fw_cfg),
    )


def machine_for_restore(
    saved: SavedMachine,
    *,
    kernel_path: Path,
    initrd_path: Path | None,
    drive_sources: dict[str, str],
    memory_file: MemoryFileConfig,
    taps: tuple[str | None, ...] = (),
    netns: str | None = None,
    name: str = "ember",
    fw_cfg: dict[str, str] | None = None,
) -> MachineConfig:
    """The config that restores ``saved`` with this host's paths (drives by id, NICs in order).

    ``fw_cfg`` gives values for the fw_cfg files the machine was saved with; names it did
    not have are left out (a restored guest would not see them), and missing ones raise.
    """
    missing = [drive_id for drive_id in saved.drive_ids if drive_id not in drive_sources]
    if missing:
        raise VmError(f"no source given for the snapshot's drives {missing}")
    values = fw_cfg or {}
    absent = [fw_name for fw_name in saved.fw_cfg_names if fw_name not in values]
    if absent:
        raise VmError(f"no value given for the snapshot's fw_cfg files {absent}")
    if len(taps) != len(saved.nic_macs):
        raise VmError(f"the snapshot has {len(saved.nic_macs)} NICs but {len(taps)} were given")
    return MachineConfig(
        kernel_path=kernel_path,
        initrd_path=initrd_path,
        cmdline=saved.cmdline,
        memory_mib=saved.memory_mib,
        vcpu_count=saved.vcpu_count,
        drives=tuple(DriveConfig(drive_sources[drive_id], drive_id=drive_id) for drive_id in saved.drive_ids),
        memory_file=memory_file,
        nics=tuple(NicConfig(tap=tap, mac=mac) for tap, mac in zip(taps, saved.nic_macs, strict=True)),
        name=name,
        netns=netns,
        fw_cfg=tuple((fw_name, values[fw_name]) for fw_name in saved.fw_cfg_names),
    )

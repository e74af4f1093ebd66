"""The QEMU driver: machine config -> argv, QMP control, process lifecycle, snapshots."""

from ember.vmm.qemu.config import (
    GUEST_MAC,
    Accel,
    AccelChoice,
    DriveConfig,
    MachineConfig,
    MemoryFileConfig,
    NicConfig,
    choose_accel,
    qemu_argv,
    qemu_version,
)
from ember.vmm.qemu.process import QemuVm
from ember.vmm.qemu.qmp import QmpClient
from ember.vmm.qemu.snapfile import SavedMachine, machine_for_restore, read_header, saved_machine

__all__ = [
    "GUEST_MAC",
    "Accel",
    "AccelChoice",
    "DriveConfig",
    "MachineConfig",
    "MemoryFileConfig",
    "NicConfig",
    "QemuVm",
    "QmpClient",
    "SavedMachine",
    "choose_accel",
    "machine_for_restore",
    "qemu_argv",
    "qemu_version",
    "read_header",
    "saved_machine",
]

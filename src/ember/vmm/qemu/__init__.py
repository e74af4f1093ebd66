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
    "choose_accel",
    "qemu_argv",
    "qemu_version",
]

"""The QEMU driver: machine config -> argv, QMP control, process lifecycle, snapshots."""

from ember.vmm.qemu.config import (
    Accel,
    AccelChoice,
    DriveConfig,
    MachineConfig,
    MemoryFileConfig,
    choose_accel,
    qemu_argv,
)
from ember.vmm.qemu.process import QemuVm
from ember.vmm.qemu.qmp import QmpClient

__all__ = [
    "Accel",
    "AccelChoice",
    "DriveConfig",
    "MachineConfig",
    "MemoryFileConfig",
    "QemuVm",
    "QmpClient",
    "choose_accel",
    "qemu_argv",
]

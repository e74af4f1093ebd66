"""Which VMM runs a sandbox here: Firecracker when KVM can run a Linux guest, QEMU otherwise.

The host check is the QEMU driver's (``choose_accel``): KVM usable and not PVM. On a PVM host
(module ``kvm_pvm``) Firecracker starts, but guest kernel mode runs in KVM's instruction
emulator, which dies on the first instruction it lacks; only toy guests run there, so ``auto``
picks QEMU (TCG). An explicit request is honoured whenever the VMM can start at all.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

from ember.errors import UsageError
from ember.vmm.qemu.config import Accel, choose_accel


class VmmName(enum.StrEnum):
    """The VMM drivers ember has."""

    FIRECRACKER = "firecracker"
    QEMU = "qemu"


AUTO = "auto"
CHOICES = (AUTO, VmmName.FIRECRACKER.value, VmmName.QEMU.value)


@dataclass(frozen=True)
class VmmChoice:
    """The VMM picked, and the reason in words a user can act on."""

    name: VmmName
    reason: str


def choose_vmm(
    requested: str = AUTO, *, dev_kvm: Path = Path("/dev/kvm"), sys_module: Path = Path("/sys/module")
) -> VmmChoice:
    """The VMM for ``requested`` (``auto``, ``firecracker`` or ``qemu``) on this host.

    Raises UsageError for an unknown name, and for ``firecracker`` when ``dev_kvm`` is missing
    or not read/writable (Firecracker has no software CPU).
    """
    if requested not in CHOICES:
        raise UsageError(f"unknown VMM {requested!r}: use one of {', '.join(CHOICES)}")
    accel = choose_accel(dev_kvm=dev_kvm, sys_module=sys_module)
    if requested == VmmName.QEMU:
        return VmmChoice(VmmName.QEMU, f"qemu was requested; {accel.reason}")
    if requested == VmmName.FIRECRACKER:
        if not os.access(dev_kvm, os.R_OK | os.W_OK):
            raise UsageError(
                f"firecracker needs read/write access to {dev_kvm}, which is missing or not accessible: "
                "run as root, or use the qemu VMM (or auto) on this host"
            )
        if accel.accel is Accel.KVM:
            return VmmChoice(VmmName.FIRECRACKER, f"firecracker was requested; {accel.reason}")
        return VmmChoice(
            VmmName.FIRECRACKER,
            f"firecracker was requested, but it can run only toy guests here: {accel.reason}",
        )
    if accel.accel is Accel.KVM:
        return VmmChoice(VmmName.FIRECRACKER, f"Firecracker, because {accel.reason}")
    return VmmChoice(VmmName.QEMU, f"QEMU, because {accel.reason}")

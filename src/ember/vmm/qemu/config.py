"""A typed QEMU machine description, and the one function that turns it into argv.

The machine is always ``q35`` with ``-nodefaults`` (no VGA, no NIC, no default serial: the
device state that a snapshot saves stays ~300 KB), one 8250 serial port written to the
console file, QMP on a unix socket, and virtio-blk disks::

    qemu-system-x86_64 -name <name> -machine q35,accel=<tcg|kvm>[,memory-backend=ram0]
        -nodefaults -no-user-config -display none -no-reboot -m <MiB>M -smp <n>
        [-object memory-backend-file,id=ram0,size=<MiB>M,mem-path=<file>,share=on|off]
        -kernel <bzImage> [-initrd <initramfs>] -append <cmdline>
        -serial file:<console> -qmp unix:<socket>,server=on,wait=off
        { -drive file=<path|nbd+unix:///?socket=...>,format=raw,if=none,id=<id>,cache=<...>
          -device virtio-blk-pci,drive=<id> } ...
        [-fw_cfg name=<opt/...>,string=<value>] ...
        [-incoming defer]

Disks given as a URL (QEMU's own NBD client) use ``cache=none``: every guest write goes to
the server at once, so the server's overlay is the disk's truth. Disks given as host files
use ``cache=writeback`` (``cache=none`` needs O_DIRECT, which tmpfs lacks); the file is
complete once QEMU has exited.

Acceleration: KVM only when it can run a stock Linux guest. A PVM host (module kvm_pvm)
runs guest kernel mode in an instruction emulator that dies on the first unsupported
instruction (feasibility study, section 3), so there and without /dev/kvm it is TCG.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ember.errors import VmError

_log = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-x86_64"
MEMORY_BACKEND_ID = "ram0"


class Accel(enum.Enum):
    """How QEMU runs guest code."""

    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator picked for this host, and the reason in words a user can act on."""

    accel: Accel
    reason: str


@dataclass(frozen=True)
class DriveConfig:
    """A virtio-blk disk: a host file path or a URL QEMU opens itself (``nbd+unix://...``)."""

    source: str
    drive_id: str = "rootfs"
    read_only: bool = False

    @property
    def is_url(self) -> bool:
        return "://" in self.source


@dataclass(frozen=True)
class MemoryFileConfig:
    """Guest RAM in a host file: what makes a snapshot cheap (``x-ignore-shared``).

    ``shared=True`` maps the file MAP_SHARED, so the file always holds the guest's RAM (a
    snapshot needs this); ``shared=False`` maps it copy-on-write, so a restore leaves the
    file untouched.
    """

    path: Path
    shared: bool = True


GUEST_MAC = "02:FC:00:00:00:05"
"""The original's guest MAC: baked into every snapshot, so every sandbox's NIC must carry it."""


@dataclass(frozen=True)
class NicConfig:
    """A virtio-net NIC: on a tap device (in the VMM's network namespace), or user-mode
    networking with ``host_forwards`` of (127.0.0.1 port, guest port) when ``tap`` is None."""

    tap: str | None = None
    mac: str = GUEST_MAC
    host_forwards: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class MachineConfig:
    """Everything that defines a guest; equal configs give equal argv (restore relies on it)."""

    kernel_path: Path
    cmdline: str
    initrd_path: Path | None = None
    memory_mib: int = 256
    vcpu_count: int = 1
    drives: tuple[DriveConfig, ...] = ()
    memory_file: MemoryFileConfig | None = None
    nics: tuple[NicConfig, ...] = ()
    name: str = "ember"
    netns: str | None = None
    fw_cfg: tuple[tuple[str, str], ...] = ()
    """``(name, value)`` strings the guest reads from QEMU's fw_cfg device (``opt/...`` names).

    Only QEMU writes them, and a restore may give new values (the guest reads the device
    afresh), which makes them the host's channel into a sandbox. The set of names must be
    the same on restore; each value's length must be too (the guest's sysfs keeps sizes).
    """

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib << 20


@functools.cache
def qemu_version(binary: str = QEMU_BINARY) -> str:
    """``qemu-<x.y.z>``: recorded in a build's metadata as the VMM that wrote its snapfile."""
    try:
        output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise VmError(
            f"cannot run {binary} --version: {exc}; install qemu-system-x86 (scripts/setup.sh)"
        ) from exc
    match = re.search(r"version (\d+\.\d+(?:\.\d+)?)", output)
    if match is None:
        raise VmError(f"cannot read the QEMU version from {output.strip()!r}")
    return f"qemu-{match.group(1)}"


def choose_accel(dev_kvm: Path = Path("/dev/kvm"), sys_module: Path = Path("/sys/module")) -> AccelChoice:
    """KVM when ``dev_kvm`` is usable and not PVM, else TCG; the reason is logged."""
    if (sys_module / "kvm_pvm").exists():
        choice = AccelChoice(
            Accel.TCG,
            "KVM here is PVM (kvm_pvm loaded): it cannot run a stock Linux guest kernel, using TCG",
        )
    elif not dev_kvm.exists():
        choice = AccelChoice(Accel.TCG, f"{dev_kvm} does not exist, using TCG (software CPU, ~10x slower)")
    elif not os.access(dev_kvm, os.R_OK | os.W_OK):
        choice = AccelChoice(Accel.TCG, f"no read/write access to {dev_kvm}, using TCG; run as root for KVM")
    else:
        choice = AccelChoice(Accel.KVM, f"{dev_kvm} is usable, using KVM")
    _log.info("qemu accelerator: %s", choice.reason)
    return choice


def qemu_argv(
    config: MachineConfig,
    *,
    accel: Accel,
    console_path: Path,
    qmp_path: Path,
    incoming: bool = False,
    binary: str = QEMU_BINARY,
) -> list[str]:
    """The full QEMU command line for ``config``; ``incoming`` waits for a migration stream."""
    machine = f"q35,accel={accel.value}"
    if config.memory_file is not None:
        machine += f",memory-backend={MEMORY_BACKEND_ID}"
    argv = [binary, "-name", config.name, "-machine", machine]
    if accel is Accel.KVM:
        argv += ["-cpu", "host"]
    argv += ["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]
    argv += ["-m", f"{config.memory_mib}M", "-smp", str(config.vcpu_count)]
    if config.memory_file is not None:
        share = "on" if config.memory_file.shared else "off"
        backend = (
            f"memory-backend-file,id={MEMORY_BACKEND_ID},size={config.memory_mib}M,"
            f"mem-path={_escape(str(config.memory_file.path))},share={share}"
        )
        argv += ["-object", backend]
    argv += ["-kernel", str(config.kernel_path)]
    if config.initrd_path is not None:
        argv += ["-initrd", str(config.initrd_path)]
    argv += ["-append", config.cmdline]
    argv += ["-serial", f"file:{console_path}", "-qmp", f"unix:{qmp_path},server=on,wait=off"]
    for fw_name, fw_value in config.fw_cfg:
        argv += ["-fw_cfg", f"name={_escape(fw_name)},string={_escape(fw_value)}"]
    for drive in config.drives:
        options = [
            f"file={_escape(drive.source)}",
            "format=raw",
            "if=none",
            f"id={drive.drive_id}",
            f"cache={'none' if drive.is_url else 'writeback'}",
        ]
        if drive.read_only:
            options.append("readonly=on")
        argv += ["-drive", ",".join(options), "-device", f"virtio-blk-pci,drive={drive.drive_id}"]
    for index, nic in enumerate(config.nics):
        netdev = f"net{index}"
        if nic.tap is not None:
            backend = f"tap,id={netdev},ifname={nic.tap},script=no,downscript=no"
        else:
            forwards = "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in nic.host_forwards)
            backend = f"user,id={netdev}{forwards}"
        argv += ["-netdev", backend, "-device", f"virtio-net-pci,netdev={netdev},mac={nic.mac}"]
    if incoming:
        argv += ["-incoming", "defer"]
    # QEMU dies with the process that started it: an ember killed with SIGKILL must not
    # leave a guest running with its disk and memory servers gone.
    argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
    if config.netns is not None:
        # nsenter enters only the network namespace; ``ip netns exec`` would also give QEMU a
        # private copy of every mount, keeping the lazily served memory mount alive after
        # ember unmounts it.
        argv = ["nsenter", f"--net=/var/run/netns/{config.netns}", "--", *argv]
    return argv


def _escape(value: str) -> str:
    """QEMU option values escape a literal comma by doubling it."""
    return value.replace(",", ",,")

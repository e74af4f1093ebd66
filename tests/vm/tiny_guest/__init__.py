"""The tiny guest for Firecracker VM tests: ``tick.S`` assembled and linked with binutils.

A PVM host runs only guests whose kernel mode sticks to instructions KVM's emulator knows, so
the Firecracker tests boot this small program instead of Linux. It prints ``READY_MARKER``,
then ``TICK <n>`` every ~0.4 s (the count lives in guest RAM), dirtying one page per tick.
``skip_reason()`` says why a host cannot run it; the test modules' fixtures skip with it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("tick.S")
READY_MARKER = "TINY-GUEST-READY"
LINK_ADDRESS = 0x1000000  # 16 MiB: guest RAM must extend past it (the guest also uses 4-15 MiB)
MEMORY_MIB = 32


def skip_reason() -> str | None:
    """Why Firecracker VM tests cannot run here, or None when they can."""
    if not Path("/dev/kvm").exists():
        return "/dev/kvm is missing: Firecracker needs KVM"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no read/write access to /dev/kvm: run the VM tests as root"
    missing = [tool for tool in ("as", "ld") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: apt-get install binutils"
    return None


def build_tiny_guest(directory: Path) -> Path:
    """Assemble and link ``tick.S`` into ``directory/tick.elf``; the ELF's path."""
    obj = directory / "tick.o"
    elf = directory / "tick.elf"
    subprocess.run(["as", "--64", "-o", str(obj), str(SOURCE)], check=True, capture_output=True)
    link = [
        "ld",
        "-static",
        "-nostdlib",
        "-e",
        "_start",
        f"-Ttext={LINK_ADDRESS:#x}",
        "-o",
        str(elf),
        str(obj),
    ]
    subprocess.run(link, check=True, capture_output=True)
    return elf


def ticks(console: Path) -> list[int]:
    """Every ``TICK n`` count printed on ``console``, in order."""
    return [int(n) for n in re.findall(r"^TICK (\d+)$", console.read_text(), re.MULTILINE)]

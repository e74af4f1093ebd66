"""The guest kernel command line, rendered the way the original renders it (facts file 5.3).

Keys are sorted and a key with an empty value is written alone, so the same settings
always give the same bytes (the command line is part of what a snapshot was booted with).
The network settings are the original's: the guest is always 169.254.0.21 behind tap0,
so a restored guest keeps its address whatever slot it lands in.
"""

from __future__ import annotations

from collections.abc import Mapping

from ember.errors import UsageError

GUEST_IP = "169.254.0.21"
TAP_IP = "169.254.0.22"
TAP_MASK = "255.255.255.252"
TAP_NAME = "tap0"
GUEST_IFACE = "eth0"
GUEST_INIT = "/sbin/ember-init"

RESERVED = frozenset(
    {"init", "clocksource", "root", "ip", "console", "rootflags", "panic", "reboot", "loglevel", "quiet"}
)


def ip_arg(guest_ip: str = GUEST_IP, gateway: str = TAP_IP, mask: str = TAP_MASK) -> str:
    """``<guest ip>::<gateway>:<mask>:instance:<iface>:off:<tap>``, the original's ``ip=`` value."""
    return f"{guest_ip}::{gateway}:{mask}:instance:{GUEST_IFACE}:off:{TAP_NAME}"


def kernel_args(
    *,
    init: str = GUEST_INIT,
    ip: str | None = None,
    console: bool = True,
    pci: bool = True,
    extra: Mapping[str, str] | None = None,
) -> str:
    """The command line for one boot.

    ``pci=False`` adds ``pci=off`` (Firecracker has no PCI bus; QEMU's q35 needs it on).
    ``console`` sends kernel messages to the first serial port, which ember reads.
    """
    args: dict[str, str] = {
        "init": init,
        "ip": ip if ip is not None else ip_arg(),
        "ipv6.autoconf": "1",
        "ipv6.disable": "0",
        "panic": "1",
        "reboot": "k",
        "i8042.nokbd": "",
        "i8042.noaux": "",
        "random.trust_cpu": "on",
        "rootflags": "discard",
    }
    if console:
        args.update({"console": "ttyS0", "loglevel": "5"})
    else:
        args.update({"quiet": "", "loglevel": "1"})
    if not pci:
        args["pci"] = "off"
    for key, value in (extra or {}).items():
        if key in RESERVED:
            raise UsageError(
                f"kernel argument {key!r} is reserved: ember sets it itself; drop it from the extra arguments"
            )
        args[key] = value
    return " ".join(key if not value else f"{key}={value}" for key, value in sorted(args.items()))

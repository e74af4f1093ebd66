"""Which names and addresses slot ``idx`` gets, and how to run a program inside it; no I/O.

One slot, seen from the host down to the guest (slot 1 with the default CIDRs)::

    host netns                     ns-1                                  guest (VM)
    veth-1 10.12.0.2/31  <-veth->  eth0 10.12.0.3/31
                                   tap0 169.254.0.22/30  <-tap->  eth0 169.254.0.21
    route 10.11.0.1/32 via 10.12.0.3         DNAT 10.11.0.1 -> 169.254.0.21 (in)
                                             SNAT 169.254.0.21 -> 10.11.0.1 (out)

Every guest sits at 169.254.0.21 behind a tap with the same MAC, so a snapshot restored in
any slot keeps its address and ARP cache; the host tells guests apart by ``host_ip``, the
``idx``-th address of ``SANDBOXES_HOST_NETWORK_CIDR``. The veth pair of slot ``idx`` is the
/31 at index ``2*idx`` of ``SANDBOXES_VRT_NETWORK_CIDR`` (host end even, namespace end odd).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from ember.errors import UsageError

VRT_CIDR_VARIABLE = "SANDBOXES_VRT_NETWORK_CIDR"
HOST_CIDR_VARIABLE = "SANDBOXES_HOST_NETWORK_CIDR"
DEFAULT_VRT_CIDR = IPv4Network("10.12.0.0/16")
DEFAULT_HOST_CIDR = IPv4Network("10.11.0.0/16")

VETH_PREFIX_LEN = 31
HOST_IP_PREFIX_LEN = 32
VPEER_NAME = "eth0"
TAP_NAME = "tap0"
GUEST_IP = IPv4Address("169.254.0.21")
TAP_IP = IPv4Address("169.254.0.22")
TAP_PREFIX_LEN = 30
TAP_MAC = "02:FC:00:00:00:06"
GUEST_MAC = "02:FC:00:00:00:05"

NAMESPACE_PREFIX = "ns-"
VETH_PREFIX = "veth-"
RULE_TAG_PREFIX = "ember-slot-"


@dataclass(frozen=True)
class Slot:
    """Everything that identifies slot ``idx``; ``tag`` marks its iptables rules.

    ``tap_mac`` is the namespace side of the tap; ``guest_mac`` is the MAC the VMM gives
    the guest's NIC (the original's ``02:FC:00:00:00:05``). Both are the same in every slot.
    ``sandbox_cidrs`` are the two CIDRs every slot's addresses come from (VRT, host): its
    egress firewall keeps the guest off them, so it can reach no veth and no other sandbox.
    """

    idx: int
    namespace: str
    veth: str
    vpeer: str
    veth_ip: IPv4Address
    vpeer_ip: IPv4Address
    host_ip: IPv4Address
    sandbox_cidrs: tuple[IPv4Network, IPv4Network]
    tap: str = TAP_NAME
    tap_ip: IPv4Address = TAP_IP
    tap_prefix_len: int = TAP_PREFIX_LEN
    tap_mac: str = TAP_MAC
    guest_ip: IPv4Address = GUEST_IP
    guest_mac: str = GUEST_MAC

    @property
    def tag(self) -> str:
        return f"{RULE_TAG_PREFIX}{self.idx}"


def _parse_cidr(variable: str, text: str) -> IPv4Network:
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise UsageError(
            f"{variable}={text!r} is not an IPv4 network in CIDR form: set it like {DEFAULT_VRT_CIDR}"
        ) from exc
    if not isinstance(network, IPv4Network):
        raise UsageError(f"{variable}={text!r} is IPv6: sandbox networking needs an IPv4 CIDR")
    return network


@dataclass(frozen=True)
class SlotConfig:
    """The two CIDRs slots are carved from; ``slot(idx)`` gives slot ``idx``'s addresses.

    ``slot_count`` follows the original (half the veth CIDR, minus two: 32766 for a /16),
    capped so every slot also has its own address in the host CIDR.
    """

    vrt_cidr: IPv4Network = DEFAULT_VRT_CIDR
    host_cidr: IPv4Network = DEFAULT_HOST_CIDR

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SlotConfig:
        """Read the CIDRs from the environment; unset or empty variables take the defaults."""
        env = os.environ if environ is None else environ
        config = cls(
            vrt_cidr=_parse_cidr(VRT_CIDR_VARIABLE, env.get(VRT_CIDR_VARIABLE) or str(DEFAULT_VRT_CIDR)),
            host_cidr=_parse_cidr(HOST_CIDR_VARIABLE, env.get(HOST_CIDR_VARIABLE) or str(DEFAULT_HOST_CIDR)),
        )
        if config.slot_count < 1:
            raise UsageError(
                f"{VRT_CIDR_VARIABLE}={config.vrt_cidr} and {HOST_CIDR_VARIABLE}={config.host_cidr} "
                "leave room for no slot: use networks of /29 or larger"
            )
        return config

    @property
    def slot_count(self) -> int:
        return min(self.vrt_cidr.num_addresses // 2 - 2, self.host_cidr.num_addresses - 2)

    def slot(self, idx: int) -> Slot:
        """Slot ``idx`` (1..``slot_count``); raises UsageError outside that range."""
        if not 1 <= idx <= self.slot_count:
            raise UsageError(
                f"network slot {idx} does not exist: slots are 1..{self.slot_count} for "
                f"{VRT_CIDR_VARIABLE}={self.vrt_cidr} and {HOST_CIDR_VARIABLE}={self.host_cidr}"
            )
        base = self.vrt_cidr.network_address
        return Slot(
            idx=idx,
            namespace=f"{NAMESPACE_PREFIX}{idx}",
            veth=f"{VETH_PREFIX}{idx}",
            vpeer=VPEER_NAME,
            veth_ip=base + 2 * idx,
            vpeer_ip=base + 2 * idx + 1,
            host_ip=self.host_cidr.network_address + idx,
            sandbox_cidrs=(self.vrt_cidr, self.host_cidr),
        )


def netns_exec_argv(slot: Slot, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside the slot's namespace, as the original starts its VMMs.

    ``ip netns exec`` also gives the program the namespace's own ``/sys`` view and per-namespace
    ``/etc/netns/<name>`` overrides, which a bare ``setns`` would not.
    """
    return ["ip", "netns", "exec", slot.namespace, *argv]

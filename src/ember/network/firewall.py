"""A slot's filter rules: the egress policy inside its namespace, the guest-to-host guard on the host; no I/O.

Two layers, so that neither a policy mistake nor a host address ember does not know about
opens the host to a guest:

**Inside ``ns-<idx>``** (filter table; they die with the namespace), every packet arriving from
``tap0`` - routed on (FORWARD) or addressed to the namespace itself (INPUT) - goes through
``EMBER-EGRESS``, which renders ``ember.network.egress`` in its order::

    :EMBER-EGRESS / :EMBER-REJECT
    -A INPUT   -i tap0 -j EMBER-EGRESS
    -A FORWARD -i tap0 -j EMBER-EGRESS
    -A EMBER-EGRESS ! -s 169.254.0.21/32 -j DROP                 spoofed source: never answered
    -A EMBER-EGRESS -m conntrack --ctstate RELATED,ESTABLISHED --ctdir REPLY -j ACCEPT
    -A EMBER-EGRESS -d <always denied> -j EMBER-REJECT           link-local, loopback, slot CIDRs...
    -A EMBER-EGRESS -d <allowed_cidrs> -j ACCEPT
    -A EMBER-EGRESS -d <denied_cidrs>, <private ranges> -j EMBER-REJECT
    -A EMBER-EGRESS -j ACCEPT | EMBER-REJECT                     internet access on | off
    -A EMBER-REJECT -p tcp -j REJECT --reject-with tcp-reset
    -A EMBER-REJECT -j REJECT --reject-with icmp-port-unreachable

Only packets in the *reply* direction of a tracked connection skip the policy: the guest's
answers to connections opened towards it (the host calling envd). The guest's own connections
are judged packet by packet, so ``update_egress`` also cuts connections already open to a
destination it now denies, not only new ones. Denied packets are rejected, not dropped: a TCP
reset or an ICMP port-unreachable makes the guest's ``connect`` fail at once with "connection
refused" instead of hanging for the whole TCP timeout (a guest's package manager or health check
gives up in milliseconds, not minutes). Spoofed sources are dropped silently: an answer would go
to an address the guest does not own.

These namespace rules are not tagged: the namespace is the slot's alone, the chain names find
them, and ``update_egress`` replaces ``EMBER-EGRESS`` whole (declaring a chain in
``iptables-restore --noflush`` empties it in the same transaction, so no packet ever sees a
half-written policy).

**On the host** (filter INPUT, tagged ``ember-slot-<idx>`` like every host rule, inserted at the
top so no accept-all rule before them can shadow them)::

    -I INPUT 1 -i veth-<idx> -m conntrack --ctstate RELATED,ESTABLISHED --ctdir REPLY ... -j ACCEPT
    [-I INPUT n -i veth-<idx> -p tcp -m tcp --dport <port> ... -j ACCEPT]   GUEST_SERVICE_PORTS
    -I INPUT n -i veth-<idx> -p tcp ... -j REJECT --reject-with tcp-reset
    -I INPUT n -i veth-<idx> ... -j REJECT --reject-with icmp-port-unreachable

Whatever host address a guest's packet targets (its veth, another slot's veth, the default
route's interface, a docker bridge, an address added later), it reaches the host's INPUT through
``veth-<idx>``, so this guard needs no list of host addresses and holds even where the policy
allows a range holding one. Replies to the host's own connections (envd) still pass.

Both layers are IPv4: a slot has no IPv6 route beyond its links' own link-local addresses, so
a guest has no IPv6 path to the host or beyond it to filter.

``GUEST_SERVICE_PORTS`` is the hook for services the orchestrator itself serves to guests (the
original's hyperloop and NFS proxy are such). None exist yet, so it is empty; a port listed there
becomes reachable on TCP at the slot's veth address (the host end of its veth pair), through both
layers.
"""

from __future__ import annotations

from collections.abc import Sequence

from ember.network.addressing import Slot
from ember.network.egress import ALWAYS_DENIED, DENIED_BY_DEFAULT, EgressPolicy

EGRESS_CHAIN = "EMBER-EGRESS"
REJECT_CHAIN = "EMBER-REJECT"
GUEST_SERVICE_PORTS: tuple[int, ...] = ()
_REPLIES = "-m conntrack --ctstate RELATED,ESTABLISHED --ctdir REPLY"


def egress_rules(
    slot: Slot, policy: EgressPolicy, service_ports: Sequence[int] = GUEST_SERVICE_PORTS
) -> list[str]:
    """The ``-A EMBER-EGRESS`` rules for ``policy``, in ``iptables-restore`` syntax."""
    rules = [f"! -s {slot.guest_ip}/32 -j DROP", f"{_REPLIES} -j ACCEPT"]
    rules += [f"-d {slot.veth_ip}/32 -p tcp -m tcp --dport {port} -j ACCEPT" for port in service_ports]
    rules += [f"-d {network} -j {REJECT_CHAIN}" for network in (*ALWAYS_DENIED, *slot.sandbox_cidrs)]
    rules += [f"-d {network} -j ACCEPT" for network in policy.allowed_cidrs]
    rules += [f"-d {network} -j {REJECT_CHAIN}" for network in (*policy.denied_cidrs, *DENIED_BY_DEFAULT)]
    rules.append(f"-j {'ACCEPT' if policy.allow_internet_access else REJECT_CHAIN}")
    return [f"-A {EGRESS_CHAIN} {rule}" for rule in rules]


def namespace_filter_rules(
    slot: Slot, policy: EgressPolicy, service_ports: Sequence[int] = GUEST_SERVICE_PORTS
) -> list[str]:
    """The namespace's whole filter table part: both chains, the reject chain and the two jumps."""
    return [
        f":{EGRESS_CHAIN} - [0:0]",
        f":{REJECT_CHAIN} - [0:0]",
        *egress_rules(slot, policy, service_ports),
        f"-A {REJECT_CHAIN} -p tcp -j REJECT --reject-with tcp-reset",
        f"-A {REJECT_CHAIN} -j REJECT --reject-with icmp-port-unreachable",
        f"-A INPUT -i {slot.tap} -j {EGRESS_CHAIN}",
        f"-A FORWARD -i {slot.tap} -j {EGRESS_CHAIN}",
    ]


def egress_swap_rules(
    slot: Slot, policy: EgressPolicy, service_ports: Sequence[int] = GUEST_SERVICE_PORTS
) -> list[str]:
    """``EMBER-EGRESS`` redeclared (emptied) and refilled: one transaction replaces the policy."""
    return [f":{EGRESS_CHAIN} - [0:0]", *egress_rules(slot, policy, service_ports)]


def host_guard_rules(slot: Slot, service_ports: Sequence[int] = GUEST_SERVICE_PORTS) -> list[str]:
    """The host INPUT rules that keep the slot's guest off every host address, tagged."""
    tag = f"-m comment --comment {slot.tag}"
    verdicts = [
        f"{_REPLIES} {tag} -j ACCEPT",
        *(f"-p tcp -m tcp --dport {port} {tag} -j ACCEPT" for port in service_ports),
        f"-p tcp {tag} -j REJECT --reject-with tcp-reset",
        f"{tag} -j REJECT --reject-with icmp-port-unreachable",
    ]
    return [f"-I INPUT {position} -i {slot.veth} {verdict}" for position, verdict in enumerate(verdicts, 1)]

"""The firewall's iptables-restore scripts, exactly: the egress chain in the namespace, the guard on the host.

Rules are written the way ``iptables-save`` prints them, so what ember loads, what the kernel
holds and what teardown replays as deletions are the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Network

import pytest

from ember.network import EgressPolicy, SlotConfig, firewall, nat, update_egress
from ember.network import slot as slot_module

SLOT = SlotConfig().slot(3)
RESTORE_IN_NS = ["ip", "netns", "exec", "ns-3", "iptables-restore", "-w", "--noflush"]

ALWAYS_DENIED_RULES = [
    "-A EMBER-EGRESS ! -s 169.254.0.21/32 -j DROP",
    "-A EMBER-EGRESS -m conntrack --ctstate RELATED,ESTABLISHED --ctdir REPLY -j ACCEPT",
    "-A EMBER-EGRESS -d 0.0.0.0/8 -j EMBER-REJECT",
    "-A EMBER-EGRESS -d 127.0.0.0/8 -j EMBER-REJECT",
    "-A EMBER-EGRESS -d 169.254.0.0/16 -j EMBER-REJECT",
    "-A EMBER-EGRESS -d 224.0.0.0/4 -j EMBER-REJECT",
    "-A EMBER-EGRESS -d 240.0.0.0/4 -j EMBER-REJECT",
    "-A EMBER-EGRESS -d 10.12.0.0/16 -j EMBER-REJECT",
    "-A EMBER-EGRESS -d 10.11.0.0/16 -j EMBER-REJECT",
]
PRIVATE_RULES = [
    "-A EMBER-EGRESS -d 10.0.0.0/8 -j EMBER-REJECT",
    "-A EMBER-EGRESS -d 172.16.0.0/12 -j EMBER-REJECT",
    "-A EMBER-EGRESS -d 192.168.0.0/16 -j EMBER-REJECT",
    "-A EMBER-EGRESS -d 100.64.0.0/10 -j EMBER-REJECT",
]
DEFAULT_EGRESS_CHAIN = [*ALWAYS_DENIED_RULES, *PRIVATE_RULES, "-A EMBER-EGRESS -j ACCEPT"]
GUARD = [
    "-I INPUT 1 -i veth-3 -m conntrack --ctstate RELATED,ESTABLISHED --ctdir REPLY "
    "-m comment --comment ember-slot-3 -j ACCEPT",
    "-I INPUT 2 -i veth-3 -p tcp -m comment --comment ember-slot-3 -j REJECT --reject-with tcp-reset",
    "-I INPUT 3 -i veth-3 -m comment --comment ember-slot-3 -j REJECT --reject-with icmp-port-unreachable",
]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Sequence[str], str]]:
    recorded: list[tuple[Sequence[str], str]] = []
    monkeypatch.setattr(nat, "_run", lambda argv, stdin="": recorded.append((argv, stdin)) or "")
    return recorded


def script(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def test_a_slot_is_created_with_nat_and_the_default_egress_chain_in_one_transaction(
    calls: list[tuple[Sequence[str], str]],
) -> None:
    nat.install_namespace_rules(SLOT, EgressPolicy())
    assert calls == [
        (["ip", "netns", "exec", "ns-3", "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], ""),
        (
            RESTORE_IN_NS,
            script(
                "*nat",
                "-A POSTROUTING -o eth0 -s 169.254.0.21/32 -m comment --comment ember-slot-3 "
                "-j SNAT --to-source 10.11.0.3",
                "-A PREROUTING -i eth0 -d 10.11.0.3/32 -m comment --comment ember-slot-3 "
                "-j DNAT --to-destination 169.254.0.21",
                "COMMIT",
                "*filter",
                ":EMBER-EGRESS - [0:0]",
                ":EMBER-REJECT - [0:0]",
                *DEFAULT_EGRESS_CHAIN,
                "-A EMBER-REJECT -p tcp -j REJECT --reject-with tcp-reset",
                "-A EMBER-REJECT -j REJECT --reject-with icmp-port-unreachable",
                "-A INPUT -i tap0 -j EMBER-EGRESS",
                "-A FORWARD -i tap0 -j EMBER-EGRESS",
                "COMMIT",
            ),
        ),
    ]


def test_user_allows_come_after_the_always_denied_and_before_user_and_private_denies(
    calls: list[tuple[Sequence[str], str]],
) -> None:
    policy = EgressPolicy.parse(
        ["192.168.7.0/24", "8.8.8.8"], ["203.0.113.0/24"], allow_internet_access=False
    )
    nat.replace_egress_rules(SLOT, policy)
    assert calls == [
        (
            RESTORE_IN_NS,
            script(
                "*filter",
                ":EMBER-EGRESS - [0:0]",
                *ALWAYS_DENIED_RULES,
                "-A EMBER-EGRESS -d 192.168.7.0/24 -j ACCEPT",
                "-A EMBER-EGRESS -d 8.8.8.8/32 -j ACCEPT",
                "-A EMBER-EGRESS -d 203.0.113.0/24 -j EMBER-REJECT",
                *PRIVATE_RULES,
                "-A EMBER-EGRESS -j EMBER-REJECT",
                "COMMIT",
            ),
        )
    ]


def test_update_egress_swaps_only_the_egress_chain_and_needs_root(
    monkeypatch: pytest.MonkeyPatch, calls: list[tuple[Sequence[str], str]]
) -> None:
    monkeypatch.setattr(slot_module.os, "geteuid", lambda: 0)
    update_egress(SLOT, EgressPolicy())
    assert calls == [
        (RESTORE_IN_NS, script("*filter", ":EMBER-EGRESS - [0:0]", *DEFAULT_EGRESS_CHAIN, "COMMIT"))
    ]


def test_the_host_gets_the_guard_with_forwarding_and_masquerade_in_one_transaction(
    calls: list[tuple[Sequence[str], str]],
) -> None:
    nat.install_host_rules(SLOT, "ens4")
    assert calls == [
        (
            ["iptables-restore", "-w", "--noflush"],
            script(
                "*filter",
                *GUARD,
                "-A FORWARD -i veth-3 -o ens4 -m comment --comment ember-slot-3 -j ACCEPT",
                "-A FORWARD -i ens4 -o veth-3 -m comment --comment ember-slot-3 -j ACCEPT",
                "COMMIT",
                "*nat",
                "-A POSTROUTING -s 10.11.0.3/32 -o ens4 -m comment --comment ember-slot-3 -j MASQUERADE",
                "COMMIT",
            ),
        )
    ]


def test_without_a_default_route_the_host_still_gets_the_guard(
    calls: list[tuple[Sequence[str], str]],
) -> None:
    nat.install_host_rules(SLOT, None)
    assert calls == [(["iptables-restore", "-w", "--noflush"], script("*filter", *GUARD, "COMMIT"))]


def test_a_guest_service_port_opens_in_both_layers_at_the_veth_address_only() -> None:
    assert firewall.host_guard_rules(SLOT, service_ports=[5010]) == [
        GUARD[0],
        "-I INPUT 2 -i veth-3 -p tcp -m tcp --dport 5010 -m comment --comment ember-slot-3 -j ACCEPT",
        GUARD[1].replace("INPUT 2", "INPUT 3"),
        GUARD[2].replace("INPUT 3", "INPUT 4"),
    ]
    assert firewall.egress_rules(SLOT, EgressPolicy(), service_ports=[5010])[:4] == [
        *ALWAYS_DENIED_RULES[:2],
        "-A EMBER-EGRESS -d 10.12.0.6/32 -p tcp -m tcp --dport 5010 -j ACCEPT",
        ALWAYS_DENIED_RULES[2],
    ]


def test_no_guest_service_is_open_today() -> None:
    assert firewall.GUEST_SERVICE_PORTS == ()


def test_the_slot_cidrs_denied_are_the_configs_own() -> None:
    slot = SlotConfig(vrt_cidr=IPv4Network("172.30.0.0/24"), host_cidr=IPv4Network("172.31.0.0/24")).slot(3)
    rules = firewall.egress_rules(slot, EgressPolicy())
    assert "-A EMBER-EGRESS -d 172.30.0.0/24 -j EMBER-REJECT" in rules
    assert "-A EMBER-EGRESS -d 172.31.0.0/24 -j EMBER-REJECT" in rules
    assert rules.index("-A EMBER-EGRESS -d 172.31.0.0/24 -j EMBER-REJECT") < rules.index(
        "-A EMBER-EGRESS -d 172.16.0.0/12 -j EMBER-REJECT"
    )

"""A slot's iptables rules: NAT and the egress firewall in its namespace, guard and NAT on the host.

Every host rule carries ``-m comment --comment ember-slot-<idx>``, which is how teardown and the
startup reclaim find ember's rules and never touch anyone else's. Rules are loaded with
``iptables-restore --noflush``: all rules of one call land in one transaction, or none do.

Inside ``ns-<idx>`` (gone with the namespace), one transaction with the filter rules of
``ember.network.firewall`` (the egress policy)::

    *nat
    -A POSTROUTING -o eth0 -s 169.254.0.21/32 -m comment --comment ember-slot-<idx>
        -j SNAT --to-source <host_ip>
    -A PREROUTING -i eth0 -d <host_ip>/32 -m comment --comment ember-slot-<idx>
        -j DNAT --to-destination 169.254.0.21

On the host, one transaction: always the guest-to-host guard (``firewall.host_guard_rules``,
filter INPUT), and, only when the host has a default route (``<gw>`` is that route's link)::

    *filter
    -A FORWARD -i veth-<idx> -o <gw> -m comment --comment ember-slot-<idx> -j ACCEPT
    -A FORWARD -i <gw> -o veth-<idx> -m comment --comment ember-slot-<idx> -j ACCEPT
    *nat
    -A POSTROUTING -s <host_ip>/32 -o <gw> -m comment --comment ember-slot-<idx> -j MASQUERADE

The namespace also gets ``net.ipv4.ip_forward=1`` (a new namespace inherits the host's value,
which may be 0), so packets cross between ``eth0`` and ``tap0``. The host's own forwarding
setting is left alone: egress beyond the host needs it on, as on the original's nodes.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from ember.network import firewall
from ember.network.addressing import RULE_TAG_PREFIX, Slot, netns_exec_argv
from ember.network.egress import EgressPolicy
from ember.network.errors import NetworkError

HOST_TABLES = ("filter", "nat")
_TAG = re.compile(re.escape(RULE_TAG_PREFIX) + r"([0-9]+)")


@dataclass(frozen=True)
class TaggedRule:
    """One ``-A`` line of ``iptables-save`` whose comment is a slot tag."""

    table: str
    rule: str
    idx: int


def _run(argv: Sequence[str], stdin: str = "") -> str:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise NetworkError(
            f"{argv[0]} is not installed: install the Debian package iptables (scripts/setup.sh does)"
        ) from exc
    if done.returncode != 0:
        raise NetworkError(f"{shlex.join(argv)} failed: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


def _restore_script(rules: dict[str, list[str]]) -> str:
    lines = []
    for table, table_rules in rules.items():
        if table_rules:
            lines += [f"*{table}", *table_rules, "COMMIT"]
    return "\n".join(lines) + "\n"


def _comment(slot: Slot) -> str:
    return f"-m comment --comment {slot.tag}"


def namespace_rules(slot: Slot) -> dict[str, list[str]]:
    """The NAT rules inside the slot's namespace, by table, in ``iptables-restore`` syntax."""
    return {
        "nat": [
            f"-A POSTROUTING -o {slot.vpeer} -s {slot.guest_ip}/32 {_comment(slot)} "
            f"-j SNAT --to-source {slot.host_ip}",
            f"-A PREROUTING -i {slot.vpeer} -d {slot.host_ip}/32 {_comment(slot)} "
            f"-j DNAT --to-destination {slot.guest_ip}",
        ]
    }


def host_rules(slot: Slot, gateway_interface: str) -> dict[str, list[str]]:
    """The host's forwarding and masquerade rules for the slot, by table."""
    return {
        "filter": [
            f"-A FORWARD -i {slot.veth} -o {gateway_interface} {_comment(slot)} -j ACCEPT",
            f"-A FORWARD -i {gateway_interface} -o {slot.veth} {_comment(slot)} -j ACCEPT",
        ],
        "nat": [f"-A POSTROUTING -s {slot.host_ip}/32 -o {gateway_interface} {_comment(slot)} -j MASQUERADE"],
    }


def install_namespace_rules(slot: Slot, egress: EgressPolicy) -> None:
    """Turn on forwarding in the namespace and load its NAT rules and egress firewall in one transaction."""
    _run(netns_exec_argv(slot, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]))
    rules = {**namespace_rules(slot), "filter": firewall.namespace_filter_rules(slot, egress)}
    _run(netns_exec_argv(slot, ["iptables-restore", "-w", "--noflush"]), _restore_script(rules))


def replace_egress_rules(slot: Slot, egress: EgressPolicy) -> None:
    """Swap the namespace's egress chain for ``egress``'s in one transaction."""
    script = _restore_script({"filter": firewall.egress_swap_rules(slot, egress)})
    _run(netns_exec_argv(slot, ["iptables-restore", "-w", "--noflush"]), script)


def install_host_rules(slot: Slot, gateway_interface: str | None) -> None:
    """The guest-to-host guard, and forwarding and masquerade through ``gateway_interface`` if any."""
    rules = {"filter": firewall.host_guard_rules(slot)}
    if gateway_interface is not None:
        outward = host_rules(slot, gateway_interface)
        rules = {"filter": rules["filter"] + outward["filter"], "nat": outward["nat"]}
    _run(["iptables-restore", "-w", "--noflush"], _restore_script(rules))


def parse_tagged_rules(table: str, save_output: str) -> list[TaggedRule]:
    """The rules of ``iptables-save -t <table>`` output whose comment is exactly a slot tag."""
    found = []
    for line in save_output.splitlines():
        if not line.startswith("-A "):
            continue
        words = shlex.split(line)
        for position, word in enumerate(words[:-1]):
            if word == "--comment" and (match := _TAG.fullmatch(words[position + 1])):
                found.append(TaggedRule(table, line, int(match.group(1))))
                break
    return found


def host_tagged_rules() -> list[TaggedRule]:
    """Every host rule ember tagged, in the tables ember writes to."""
    found = []
    for table in HOST_TABLES:
        found += parse_tagged_rules(table, _run(["iptables-save", "-t", table]))
    return found


def delete_rules(rules: Sequence[TaggedRule]) -> None:
    """Delete exactly these rules (as ``iptables-save`` printed them), in one transaction."""
    by_table: dict[str, list[str]] = {}
    for rule in rules:
        by_table.setdefault(rule.table, []).append("-D" + rule.rule[2:])
    if by_table:
        _run(["iptables-restore", "-w", "--noflush"], _restore_script(by_table))

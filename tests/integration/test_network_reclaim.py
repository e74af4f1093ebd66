"""After a crash, reclaim_leftovers removes ember's slot objects, and nothing that is not ember's."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from ipaddress import IPv4Address

import pytest
from network_guests import host_links, host_routes_to, namespaces, need_root_and_iptables, run, saved_rules

from ember.network import SlotConfig, create_slot, reclaim_leftovers, remove_slot
from ember.network.links import default_gateway_interface

pytestmark = pytest.mark.root
CONFIG = SlotConfig()
CRASHING_PROCESS = """
import os, sys
from ember.network import create_slot
for idx in sys.argv[1:]:
    create_slot(int(idx))
os._exit(0)
"""
FOREIGN_RULE = "-A POSTROUTING -s 10.11.255.250/32 -m comment --comment ember-slot-x -j RETURN"
FOREIGN_ROUTE = "10.11.255.251"


@pytest.fixture
def foreign_objects() -> Iterator[None]:
    """Objects shaped almost like ember's: a namespace, a veth pair, a rule and a route."""
    need_root_and_iptables()
    with ExitStack() as cleanup:
        run("ip", "netns", "add", "ns-foreign")
        cleanup.callback(run, "ip", "netns", "del", "ns-foreign")
        run("ip", "link", "add", "veth-foreign", "up", "type", "veth", "peer", "name", "vethx-211")
        cleanup.callback(run, "ip", "link", "del", "veth-foreign")
        run("iptables", "-w", "-t", "nat", *FOREIGN_RULE.split())
        cleanup.callback(run, "iptables", "-w", "-t", "nat", "-D", *FOREIGN_RULE.split()[1:])
        run("ip", "route", "add", f"{FOREIGN_ROUTE}/32", "dev", "veth-foreign")
        yield


def test_reclaim_removes_slots_a_crashed_process_left_and_spares_the_rest(foreign_objects: None) -> None:
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_PROCESS, "211", "212"], capture_output=True, text=True, timeout=60
    )
    assert crashed.returncode == 0, crashed.stderr
    assert {"ns-211", "ns-212"} <= namespaces()
    assert {"veth-211", "veth-212"} <= host_links()

    reclaimed = reclaim_leftovers(CONFIG)

    assert {"ns-211", "ns-212"} <= set(reclaimed.namespaces)
    assert {"veth-211", "veth-212"} <= set(reclaimed.veths)
    assert {route.dst for route in reclaimed.routes} >= {
        IPv4Address("10.11.0.211"),
        IPv4Address("10.11.0.212"),
    }
    # three guard rules per slot, and three forwarding and masquerade rules where there is a gateway
    per_slot = 6 if default_gateway_interface() is not None else 3
    assert (
        sorted(rule.idx for rule in reclaimed.rules if rule.idx in (211, 212))
        == [211] * per_slot + [212] * per_slot
    )
    assert not {"ns-211", "ns-212"} & namespaces()
    assert not {"veth-211", "veth-212"} & host_links()
    assert host_routes_to(IPv4Address("10.11.0.211")) == host_routes_to(IPv4Address("10.11.0.212")) == []
    assert [
        rule for table in ("filter", "nat") for rule in saved_rules(table) if "ember-slot-21" in rule
    ] == []

    assert "ns-foreign" in namespaces()
    assert {"veth-foreign", "vethx-211"} <= host_links()
    assert FOREIGN_RULE in saved_rules("nat")
    assert len(host_routes_to(IPv4Address(FOREIGN_ROUTE))) == 1


def test_reclaim_with_nothing_left_removes_nothing() -> None:
    need_root_and_iptables()
    reclaim_leftovers(CONFIG)
    assert reclaim_leftovers(CONFIG).count == 0


def test_a_reclaimed_index_can_be_set_up_again() -> None:
    need_root_and_iptables()
    subprocess.run([sys.executable, "-c", CRASHING_PROCESS, "213"], check=True, timeout=60)
    reclaim_leftovers(CONFIG)
    slot = create_slot(213, CONFIG)
    remove_slot(slot)
    assert "ns-213" not in namespaces()

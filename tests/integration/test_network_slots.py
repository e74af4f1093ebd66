"""Real network slots: every object with the right addresses, traffic through the NAT, clean removal.

Traffic only goes to addresses inside namespaces (and veths) these tests create. Slot indices
are high so they do not meet slots a developer may have open by hand.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from network_guests import (
    guest_stand_in,
    host_routes_to,
    http_get,
    ip_json,
    namespaces,
    need_root_and_iptables,
    rules_tagged,
    run,
    slot_leftovers,
)

from ember.network import NetworkError, Slot, SlotBusy, SlotConfig, SlotPool, create_slot, remove_slot
from ember.network.links import default_gateway_interface

pytestmark = pytest.mark.root
CONFIG = SlotConfig()


@pytest.fixture(autouse=True)
def _root() -> None:
    need_root_and_iptables()


@pytest.fixture
def slot() -> Iterator[Slot]:
    made = create_slot(201, CONFIG)
    try:
        yield made
    finally:
        remove_slot(made)


def addresses(namespace: str | None, device: str) -> list[str]:
    [link] = ip_json("addr", "show", "dev", device, namespace=namespace)
    return [f"{info['local']}/{info['prefixlen']}" for info in link["addr_info"] if info["family"] == "inet"]


def test_a_slot_has_every_object_with_the_original_addresses(slot: Slot) -> None:
    assert slot.namespace in namespaces()
    [veth] = ip_json("-d", "link", "show", "dev", slot.veth)
    assert veth["linkinfo"]["info_kind"] == "veth" and "UP" in veth["flags"]
    assert addresses(None, slot.veth) == ["10.12.1.146/31"]

    inside = {link["ifname"]: link for link in ip_json("-d", "link", "show", namespace=slot.namespace)}
    assert set(inside) == {"lo", "eth0", "tap0"}
    assert inside["eth0"]["linkinfo"]["info_kind"] == "veth"
    assert inside["tap0"]["linkinfo"]["info_kind"] == "tun"
    assert inside["tap0"]["linkinfo"]["info_data"]["type"] == "tap"
    assert inside["tap0"]["address"] == "02:fc:00:00:00:06"
    assert all("UP" in inside[name]["flags"] for name in ("lo", "eth0", "tap0"))
    assert addresses(slot.namespace, "eth0") == ["10.12.1.147/31"]
    assert addresses(slot.namespace, "tap0") == ["169.254.0.22/30"]
    [default] = [r for r in ip_json("route", "show", namespace=slot.namespace) if r["dst"] == "default"]
    assert (default["gateway"], default["dev"]) == ("10.12.1.146", "eth0")
    forwarding = run("ip", "netns", "exec", slot.namespace, "cat", "/proc/sys/net/ipv4/ip_forward")
    assert forwarding.strip() == "1"

    [route] = host_routes_to(IPv4Address("10.11.0.201"))
    assert (route["gateway"], route["dev"]) == ("10.12.1.147", "veth-201")


def test_a_slots_nat_rules_are_tagged_in_the_namespace_and_on_the_host(slot: Slot) -> None:
    inside = rules_tagged("ember-slot-201", slot.namespace)
    assert len(inside) == 2
    [dnat] = [rule for rule in inside if "DNAT" in rule]
    [snat] = [rule for rule in inside if "SNAT" in rule]
    for part in ("-A PREROUTING", "-d 10.11.0.201/32", "-i eth0", "--to-destination 169.254.0.21"):
        assert part in dnat
    for part in ("-A POSTROUTING", "-s 169.254.0.21/32", "-o eth0", "--to-source 10.11.0.201"):
        assert part in snat

    guard = [
        "-A INPUT -i veth-201 -m conntrack --ctstate RELATED,ESTABLISHED --ctdir REPLY "
        "-m comment --comment ember-slot-201 -j ACCEPT",
        "-A INPUT -i veth-201 -p tcp -m comment --comment ember-slot-201 -j REJECT --reject-with tcp-reset",
        "-A INPUT -i veth-201 -m comment --comment ember-slot-201 "
        "-j REJECT --reject-with icmp-port-unreachable",
    ]
    gateway = default_gateway_interface()
    on_host = rules_tagged("ember-slot-201")
    if gateway is None:
        assert sorted(on_host) == sorted(guard)
        return
    assert sorted(on_host) == sorted(
        [
            f"-A FORWARD -i veth-201 -o {gateway} -m comment --comment ember-slot-201 -j ACCEPT",
            f"-A FORWARD -i {gateway} -o veth-201 -m comment --comment ember-slot-201 -j ACCEPT",
            f"-A POSTROUTING -s 10.11.0.201/32 -o {gateway} -m comment --comment ember-slot-201 "
            "-j MASQUERADE",
            *guard,
        ]
    )


def test_the_host_reaches_the_guest_port_at_the_slots_host_ip(slot: Slot, tmp_path: Path) -> None:
    with guest_stand_in(slot, "guest-201", tmp_path) as guest:
        token, seen_client = http_get(slot.host_ip, guest.port).split()
    assert token == "guest-201"
    assert seen_client == str(slot.veth_ip)


def test_two_slots_at_once_have_their_own_host_ip_and_guest(tmp_path: Path) -> None:
    first, second = create_slot(202, CONFIG), create_slot(203, CONFIG)
    try:
        assert (first.host_ip, second.host_ip) == (IPv4Address("10.11.0.202"), IPv4Address("10.11.0.203"))
        with (
            guest_stand_in(first, "first", tmp_path) as first_guest,
            guest_stand_in(second, "second", tmp_path) as second_guest,
        ):
            for _ in range(2):
                assert http_get(first.host_ip, first_guest.port).split()[0] == "first"
                assert http_get(second.host_ip, second_guest.port).split()[0] == "second"
    finally:
        remove_slot(first)
        remove_slot(second)
    assert slot_leftovers(first) == [] and slot_leftovers(second) == []


def test_removing_a_slot_leaves_nothing_and_can_be_repeated(tmp_path: Path) -> None:
    made = create_slot(204, CONFIG)
    assert slot_leftovers(made) != []
    with guest_stand_in(made, "gone", tmp_path):
        remove_slot(made)
    assert slot_leftovers(made) == []
    remove_slot(made)
    assert slot_leftovers(made) == []


def test_a_slot_whose_namespace_exists_is_busy_and_left_intact() -> None:
    run("ip", "netns", "add", "ns-205")
    try:
        with pytest.raises(SlotBusy, match="ns-205 already exists"):
            create_slot(205, CONFIG)
        assert "ns-205" in namespaces()
        assert slot_leftovers(CONFIG.slot(205)) == ["ns-205"]
    finally:
        run("ip", "netns", "del", "ns-205")


def test_a_failure_part_way_removes_what_was_made_and_only_that() -> None:
    slot = CONFIG.slot(206)
    run("ip", "route", "add", f"{slot.host_ip}/32", "dev", "lo")
    try:
        with pytest.raises(NetworkError, match=r"another route to 10\.11\.0\.206 exists"):
            create_slot(206, CONFIG)
        [route] = host_routes_to(slot.host_ip)
        assert route["dev"] == "lo"
        assert slot.namespace not in namespaces()
        assert rules_tagged(slot.tag) == []
    finally:
        run("ip", "route", "del", f"{slot.host_ip}/32", "dev", "lo")
    assert slot_leftovers(slot) == []


def test_the_pool_reuses_a_released_index_for_a_working_slot(tmp_path: Path) -> None:
    with SlotPool(CONFIG) as pool:
        first, second = pool.acquire(), pool.acquire()
        assert second.idx == first.idx + 1
        pool.release(first)
        assert slot_leftovers(first) == []
        again = pool.acquire()
        assert again.idx == first.idx
        token = uuid.uuid4().hex
        with guest_stand_in(again, token, tmp_path) as guest:
            assert http_get(again.host_ip, guest.port).split()[0] == token
    assert slot_leftovers(again) == [] and slot_leftovers(second) == []


def test_slots_acquired_from_several_threads_are_distinct_and_complete() -> None:
    with SlotPool(CONFIG) as pool, ThreadPoolExecutor(4) as workers:
        slots = list(workers.map(lambda _: pool.acquire(), range(6)))
        assert len({slot.idx for slot in slots}) == 6
        for slot in slots:
            assert addresses(None, slot.veth) == [f"{slot.veth_ip}/31"]
            assert addresses(slot.namespace, "tap0") == ["169.254.0.22/30"]
            assert len(rules_tagged(slot.tag, slot.namespace)) == 2
    assert [left for slot in slots for left in slot_leftovers(slot)] == []

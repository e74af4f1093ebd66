"""From a stand-in guest: no host address answers, no other sandbox, no link-local; egress follows the policy.

Every test takes its slots from its own SlotPool (owner files under tmp_path), so it only
meets indices nobody else holds. The destinations a guest sends to are an ``EgressPeer``: a
server namespace behind its own veth, on addresses the host does not route otherwise (a
private /30, a TEST-NET-2 /30 standing in for the internet, a link-local /30). "refused" is
what a REJECT looks like to the guest; each test shows the same address answering where the
policy allows it, or answering the host, so "refused" cannot be a closed port.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from network_guests import (
    Guest,
    egress_peer,
    enable_forwarding,
    guest_fetch,
    guest_stand_in,
    held_connection,
    http_get,
    link_addresses,
    namespaces,
    need_root_and_iptables,
    rules_tagged_anywhere,
    run,
    saved_rules,
    slot_leftovers,
    try_connect,
)

from ember.network import EgressPolicy, Slot, SlotConfig, SlotPool, update_egress
from ember.network.links import default_gateway_interface

pytestmark = pytest.mark.root
CONFIG = SlotConfig()
PRIVATE = IPv4Network("192.168.251.0/30")
PUBLIC = IPv4Network("198.51.100.248/30")  # TEST-NET-2: neither private nor always denied
LINK_LOCAL = IPv4Network("169.254.77.0/30")
ALLOW_ALL = EgressPolicy.parse(["0.0.0.0/0"])


@pytest.fixture(autouse=True)
def _root() -> None:
    need_root_and_iptables()


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[SlotPool]:
    with SlotPool(CONFIG, owners_dir=tmp_path / "owners") as made:
        yield made


@pytest.fixture
def host_service() -> Iterator[int]:
    """A TCP listener of the host on 0.0.0.0 (every host address): its port."""
    with socket.create_server(("0.0.0.0", 0)) as listener:
        yield listener.getsockname()[1]


def host_connects(address: IPv4Address, port: int) -> None:
    socket.create_connection((str(address), port), timeout=5).close()


def gateway_addresses() -> list[IPv4Address]:
    gateway = default_gateway_interface()
    return [] if gateway is None else link_addresses(gateway)


def answer(guest: Guest, address: IPv4Address, port: int) -> str:
    """The egress peer's answer to the guest: ``<token> <source address it saw>``."""
    return guest_fetch(guest, address, port)


@pytest.mark.parametrize("policy", [EgressPolicy(), ALLOW_ALL], ids=["default", "allow-all"])
def test_no_host_address_answers_the_guest(
    pool: SlotPool, host_service: int, tmp_path: Path, policy: EgressPolicy
) -> None:
    slot, other = pool.acquire(policy), pool.acquire()
    with (
        guest_stand_in(slot, "guest", tmp_path) as guest,
        egress_peer(slot, [PRIVATE, PUBLIC], "peer", tmp_path) as peer,
    ):
        assert answer(guest, peer.addresses[1], peer.port) == f"peer {slot.host_ip}"
        targets = [slot.veth_ip, other.veth_ip, *peer.host_addresses, *gateway_addresses()]
        for target in targets:
            host_connects(target, host_service)
            assert try_connect(guest, target, host_service) == "refused", target
        assert http_get(slot.host_ip, guest.port).split()[0] == "guest"


def test_a_host_service_on_loopback_stays_out_of_reach(pool: SlotPool, tmp_path: Path) -> None:
    slot = pool.acquire(ALLOW_ALL)
    with socket.create_server(("127.0.0.1", 0)) as listener, guest_stand_in(slot, "guest", tmp_path) as guest:
        port = listener.getsockname()[1]
        host_connects(IPv4Address("127.0.0.1"), port)
        for target in (IPv4Address("127.0.0.1"), slot.veth_ip, *gateway_addresses()):
            assert try_connect(guest, target, port) == "refused", target


def test_link_local_and_the_metadata_address_are_refused_even_when_allowed(
    pool: SlotPool, tmp_path: Path
) -> None:
    slot = pool.acquire(EgressPolicy.parse([str(LINK_LOCAL), "169.254.169.254", "0.0.0.0/0"]))
    with (
        guest_stand_in(slot, "guest", tmp_path) as guest,
        egress_peer(slot, [LINK_LOCAL, PUBLIC], "peer", tmp_path) as peer,
    ):
        link_local, public = peer.addresses
        assert http_get(link_local, peer.port).split()[0] == "peer"
        assert answer(guest, public, peer.port) == f"peer {slot.host_ip}"
        assert try_connect(guest, link_local, peer.port) == "refused"
        assert try_connect(guest, IPv4Address("169.254.169.254"), 80) == "refused"


def test_another_sandbox_is_unreachable_while_the_host_reaches_both(pool: SlotPool, tmp_path: Path) -> None:
    first, second = pool.acquire(ALLOW_ALL), pool.acquire(ALLOW_ALL)
    for slot in (first, second):
        enable_forwarding(slot.veth)  # the host would route between them: only the policy stops it
    with (
        guest_stand_in(first, "first", tmp_path) as first_guest,
        guest_stand_in(second, "second", tmp_path) as second_guest,
    ):
        assert http_get(first.host_ip, first_guest.port).split()[0] == "first"
        assert http_get(second.host_ip, second_guest.port).split()[0] == "second"
        assert try_connect(first_guest, second.host_ip, second_guest.port) == "refused"
        assert try_connect(second_guest, first.host_ip, first_guest.port) == "refused"
        assert try_connect(first_guest, second.vpeer_ip, second_guest.port) == "refused"


def test_a_private_destination_needs_an_allow_and_update_egress_switches_it(
    pool: SlotPool, host_service: int, tmp_path: Path
) -> None:
    slot = pool.acquire()
    with (
        guest_stand_in(slot, "guest", tmp_path) as guest,
        egress_peer(slot, [PRIVATE], "private", tmp_path) as peer,
    ):
        [server], [host_end] = peer.addresses, peer.host_addresses
        assert http_get(server, peer.port).split()[0] == "private"
        assert try_connect(guest, server, peer.port) == "refused"

        update_egress(slot, EgressPolicy.parse([str(PRIVATE)]))
        assert answer(guest, server, peer.port) == f"private {slot.host_ip}"
        assert try_connect(guest, host_end, host_service) == "refused"  # allowed range, but the host's

        update_egress(slot, EgressPolicy())
        assert try_connect(guest, server, peer.port) == "refused"
        assert http_get(slot.host_ip, guest.port).split()[0] == "guest"


def test_internet_access_off_denies_everything_not_allowed(pool: SlotPool, tmp_path: Path) -> None:
    slot = pool.acquire(EgressPolicy(allow_internet_access=False))
    with (
        guest_stand_in(slot, "guest", tmp_path) as guest,
        egress_peer(slot, [PUBLIC, PRIVATE], "peer", tmp_path) as peer,
    ):
        public, private = peer.addresses
        assert try_connect(guest, public, peer.port) == "refused"
        assert http_get(slot.host_ip, guest.port).split()[0] == "guest"

        update_egress(slot, EgressPolicy())
        assert answer(guest, public, peer.port) == f"peer {slot.host_ip}"

        # as in the original, the user's allow list is checked before the deny internet-off stands for
        update_egress(slot, EgressPolicy.parse([f"{public}/32"], allow_internet_access=False))
        assert answer(guest, public, peer.port) == f"peer {slot.host_ip}"
        assert try_connect(guest, private, peer.port) == "refused"
        assert http_get(slot.host_ip, guest.port).split()[0] == "guest"


def test_allowed_cidrs_win_over_denied_cidrs_which_add_denies(pool: SlotPool, tmp_path: Path) -> None:
    slot = pool.acquire(EgressPolicy.parse(denied_cidrs=[str(PUBLIC)]))
    with (
        guest_stand_in(slot, "guest", tmp_path) as guest,
        egress_peer(slot, [PUBLIC], "peer", tmp_path) as peer,
    ):
        [public] = peer.addresses
        assert try_connect(guest, public, peer.port) == "refused"
        update_egress(slot, EgressPolicy.parse([f"{public}/32"], [str(PUBLIC)]))
        assert answer(guest, public, peer.port) == f"peer {slot.host_ip}"


def test_update_egress_cuts_the_guests_open_connections_but_not_the_hosts(
    pool: SlotPool, tmp_path: Path
) -> None:
    slot = pool.acquire()
    with (
        guest_stand_in(slot, "guest", tmp_path) as guest,
        egress_peer(slot, [PUBLIC], "peer", tmp_path) as peer,
    ):
        [public] = peer.addresses
        with held_connection(guest, public, peer.port) as finish:
            update_egress(slot, ALLOW_ALL)
            assert finish() == "answered"
        with (
            held_connection(guest, public, peer.port) as finish,
            socket.create_connection((str(slot.host_ip), guest.port), timeout=10) as envd_like,
        ):
            update_egress(slot, EgressPolicy(allow_internet_access=False))
            assert finish() == "reset"
            envd_like.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert envd_like.recv(4096).startswith(b"HTTP/1.0 200")


def test_a_slots_rules_are_where_they_belong_and_go_with_it(tmp_path: Path) -> None:
    with SlotPool(CONFIG, owners_dir=tmp_path / "owners") as pool:
        slot = pool.acquire(EgressPolicy(allow_internet_access=False))
        host_input = [rule for rule in saved_rules("filter") if rule.startswith("-A INPUT ")]
        guard = [rule for rule in host_input if f"--comment {slot.tag} " in rule]
        assert all("--comment ember-slot-" in rule for rule in host_input[: host_input.index(guard[-1])])
        assert [rule.rsplit(" -j ", 1)[1] for rule in guard] == [
            "ACCEPT",
            "REJECT --reject-with tcp-reset",
            "REJECT --reject-with icmp-port-unreachable",
        ]
        inside = saved_rules("filter", slot.namespace)
        assert "-A FORWARD -i tap0 -j EMBER-EGRESS" in inside
        assert "-A INPUT -i tap0 -j EMBER-EGRESS" in inside
        assert [rule for rule in inside if rule.startswith("-A EMBER-EGRESS")][-1] == (
            "-A EMBER-EGRESS -j EMBER-REJECT"
        )
        pool.release(slot)
    assert rules_tagged_anywhere(slot.tag) == []
    assert slot_leftovers(slot) == []
    assert slot.namespace not in namespaces()


def _egress_chain(slot: Slot) -> list[str]:
    return [
        line
        for line in run("ip", "netns", "exec", slot.namespace, "iptables-save").splitlines()
        if "EGRESS" in line
    ]


def test_update_egress_replaces_the_whole_chain_in_place(pool: SlotPool) -> None:
    slot = pool.acquire(EgressPolicy.parse(["203.0.113.0/24"], ["198.51.100.0/24"]))
    update_egress(slot, EgressPolicy.parse(["192.0.2.0/24"]))
    chain = _egress_chain(slot)
    assert "-A EMBER-EGRESS -d 192.0.2.0/24 -j ACCEPT" in chain
    assert not [line for line in chain if "203.0.113.0" in line or "198.51.100.0" in line]
    assert chain.count(":EMBER-EGRESS - [0:0]") == 1

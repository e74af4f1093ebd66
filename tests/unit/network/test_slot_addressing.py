"""Slot names and addresses follow the original's arithmetic on the two CIDRs."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from ember.errors import UsageError
from ember.network import GUEST_IP, GUEST_MAC, TAP_IP, TAP_MAC, SlotConfig, netns_exec_argv


def test_default_cidrs_give_slot_five_the_documented_addresses() -> None:
    slot = SlotConfig.from_env({}).slot(5)
    assert (slot.namespace, slot.veth, slot.vpeer, slot.tap) == ("ns-5", "veth-5", "eth0", "tap0")
    assert slot.veth_ip == IPv4Address("10.12.0.10")
    assert slot.vpeer_ip == IPv4Address("10.12.0.11")
    assert slot.host_ip == IPv4Address("10.11.0.5")
    assert slot.tag == "ember-slot-5"


def test_every_slot_shares_the_guest_side_constants() -> None:
    config = SlotConfig()
    first, last = config.slot(1), config.slot(config.slot_count)
    for slot in (first, last):
        assert (slot.guest_ip, slot.tap_ip, slot.tap_prefix_len) == (GUEST_IP, TAP_IP, 30)
        assert (slot.tap_mac, slot.guest_mac) == (TAP_MAC, GUEST_MAC)
    assert str(GUEST_IP) == "169.254.0.21" and str(TAP_IP) == "169.254.0.22"
    assert TAP_MAC == "02:FC:00:00:00:06"


def test_a_slots_veth_pair_is_its_own_slash_31() -> None:
    config = SlotConfig()
    for idx in (1, 2, 127, 128, config.slot_count):
        slot = config.slot(idx)
        pair = IPv4Network(f"{slot.veth_ip}/31")
        assert slot.vpeer_ip in pair and slot.veth_ip == pair.network_address
        assert slot.veth_ip in config.vrt_cidr and slot.vpeer_ip in config.vrt_cidr
        assert slot.host_ip in config.host_cidr


def test_a_slash_16_holds_32766_slots_as_in_the_original() -> None:
    assert SlotConfig().slot_count == 32766


def test_cidrs_come_from_the_environment() -> None:
    config = SlotConfig.from_env(
        {"SANDBOXES_VRT_NETWORK_CIDR": "172.30.0.0/24", "SANDBOXES_HOST_NETWORK_CIDR": "172.31.0.0/24"}
    )
    slot = config.slot(3)
    assert (slot.veth_ip, slot.vpeer_ip, slot.host_ip) == (
        IPv4Address("172.30.0.6"),
        IPv4Address("172.30.0.7"),
        IPv4Address("172.31.0.3"),
    )
    assert config.slot_count == 126


def test_a_small_host_cidr_caps_the_slot_count() -> None:
    config = SlotConfig(host_cidr=IPv4Network("10.11.0.0/28"))
    assert config.slot_count == 14
    assert config.slot(14).host_ip == IPv4Address("10.11.0.14")


@pytest.mark.parametrize("idx", [0, -1, 32767])
def test_an_index_outside_the_cidr_is_a_usage_error(idx: int) -> None:
    with pytest.raises(UsageError, match=r"slots are 1\.\.32766"):
        SlotConfig().slot(idx)


@pytest.mark.parametrize(
    ("value", "message"),
    [("10.12.0.0/33", "not an IPv4 network"), ("10.12.0.1/16", "not an IPv4 network"), ("fd00::/64", "IPv6")],
)
def test_a_bad_cidr_names_the_variable(value: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        SlotConfig.from_env({"SANDBOXES_VRT_NETWORK_CIDR": value})
    assert "SANDBOXES_VRT_NETWORK_CIDR" in str(caught.value)


def test_a_cidr_too_small_for_one_slot_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="room for no slot"):
        SlotConfig.from_env({"SANDBOXES_VRT_NETWORK_CIDR": "10.12.0.0/30"})


def test_programs_enter_the_slot_through_ip_netns_exec() -> None:
    slot = SlotConfig().slot(7)
    assert netns_exec_argv(slot, ["qemu-system-x86_64", "-m", "512"]) == [
        "ip",
        "netns",
        "exec",
        "ns-7",
        "qemu-system-x86_64",
        "-m",
        "512",
    ]

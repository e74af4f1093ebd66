"""Sandbox networking as the original's v1 datapath: per slot a namespace, veth pair, tap, NAT, firewall."""

from ember.network.addressing import (
    DEFAULT_HOST_CIDR,
    DEFAULT_VRT_CIDR,
    GUEST_IP,
    GUEST_MAC,
    TAP_IP,
    TAP_MAC,
    Slot,
    SlotConfig,
    netns_exec_argv,
)
from ember.network.egress import EgressPolicy
from ember.network.errors import NetworkError, SlotBusy
from ember.network.ownership import reclaim_orphans
from ember.network.pool import SlotPool
from ember.network.reclaim import Reclaimed, reclaim_leftovers
from ember.network.slot import create_slot, remove_slot, update_egress

__all__ = [
    "DEFAULT_HOST_CIDR",
    "DEFAULT_VRT_CIDR",
    "GUEST_IP",
    "GUEST_MAC",
    "TAP_IP",
    "TAP_MAC",
    "EgressPolicy",
    "NetworkError",
    "Reclaimed",
    "Slot",
    "SlotBusy",
    "SlotConfig",
    "SlotPool",
    "create_slot",
    "netns_exec_argv",
    "reclaim_leftovers",
    "reclaim_orphans",
    "remove_slot",
    "update_egress",
]

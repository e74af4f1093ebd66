"""Create and remove one sandbox network slot, all or nothing.

``create_slot`` either returns a slot whose every object exists (namespace, veth pair, tap,
addresses, routes, NAT and forwarding rules) or raises having removed what it made; it
never removes an object it did not make, so a busy slot stays intact. ``remove_slot``
removes whatever of a slot is left and is a no-op the second time.

Setup order (each step's undo is registered as soon as the step succeeded)::

    ns-<idx>  ->  veth-<idx> / eth0 in ns  ->  eth0, tap0, lo, default route (in ns)
              ->  ip_forward + NAT rules (in ns)  ->  host route  ->  host rules (if gateway)
"""

from __future__ import annotations

import os
from contextlib import ExitStack

from ember.errors import UsageError
from ember.network import links, nat
from ember.network.addressing import Slot, SlotConfig


def require_root(action: str) -> None:
    """UsageError unless running as root: namespaces, veth pairs and iptables all need it."""
    if os.geteuid() != 0:
        raise UsageError(
            f"{action} needs root (network namespaces, veth pairs, iptables): "
            "run ember as root, e.g. with sudo"
        )


def _remove_host_rules(slot: Slot) -> None:
    nat.delete_rules([rule for rule in nat.host_tagged_rules() if rule.idx == slot.idx])


def create_slot(idx: int, config: SlotConfig | None = None) -> Slot:
    """Set up slot ``idx`` (addresses from ``config``, default: the environment's CIDRs).

    Raises SlotBusy when ``ns-<idx>`` or ``veth-<idx>`` already exists, NetworkError when a
    step fails, UsageError when not root or ``idx`` is out of range.
    """
    slot = (config or SlotConfig.from_env()).slot(idx)
    require_root("creating a sandbox network slot")
    with ExitStack() as undo:
        links.create_namespace(slot)
        undo.callback(links.remove_namespace, slot.namespace)
        links.create_veth(slot)
        undo.callback(links.remove_link, slot.veth)
        links.configure_namespace(slot)
        nat.install_namespace_rules(slot)
        links.add_host_route(slot)
        gateway = links.default_gateway_interface()
        if gateway is not None:
            undo.callback(_remove_host_rules, slot)
            nat.install_host_rules(slot, gateway)
        undo.pop_all()
    return slot


def remove_slot(slot: Slot) -> None:
    """Remove the slot's host rules, host route, veth pair and namespace (with tap and NAT inside).

    Host rules are found by the slot's tag, so they go even if the default route changed
    since the slot was made.
    """
    require_root("removing a sandbox network slot")
    _remove_host_rules(slot)
    links.remove_host_route(links.HostRoute(slot.host_ip, slot.vpeer_ip, slot.veth))
    links.remove_link(slot.veth)
    links.remove_namespace(slot.namespace)

"""Create and remove one sandbox network slot, all or nothing.

``create_slot`` either returns a slot whose every object exists (namespace, veth pair, tap,
addresses, routes, NAT, egress firewall, guest-to-host guard and forwarding rules) or raises
having removed what it made; it never removes an object it did not make, so a busy slot stays
intact. ``remove_slot`` removes whatever of a slot is left and is a no-op the second time.
``update_egress`` swaps a live slot's egress policy (``ember.network.egress``).

Setup order (each step's undo is registered as soon as the step succeeded)::

    ns-<idx>  ->  veth-<idx> / eth0 in ns  ->  eth0, tap0, lo, default route (in ns)
              ->  ip_forward + NAT + egress rules (in ns)  ->  host route
              ->  host rules: guard, and forwarding + masquerade if there is a default route

The guest-to-host guard is a host rule installed with or without a default route: a host with
no way out still has services a guest must not reach.
"""

from __future__ import annotations

import os
from contextlib import ExitStack

from ember.errors import UsageError
from ember.network import links, nat
from ember.network.addressing import Slot, SlotConfig
from ember.network.egress import DEFAULT_EGRESS, EgressPolicy


def require_root(action: str) -> None:
    """UsageError unless running as root: namespaces, veth pairs and iptables all need it."""
    if os.geteuid() != 0:
        raise UsageError(
            f"{action} needs root (network namespaces, veth pairs, iptables): "
            "run ember as root, e.g. with sudo"
        )


def _remove_host_rules(slot: Slot) -> None:
    nat.delete_rules([rule for rule in nat.host_tagged_rules() if rule.idx == slot.idx])


def create_slot(idx: int, config: SlotConfig | None = None, egress: EgressPolicy = DEFAULT_EGRESS) -> Slot:
    """Set up slot ``idx`` (addresses from ``config``, default: the environment's CIDRs) with ``egress``.

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
        nat.install_namespace_rules(slot, egress)
        links.add_host_route(slot)
        gateway = links.default_gateway_interface()
        undo.callback(_remove_host_rules, slot)
        nat.install_host_rules(slot, gateway)
        undo.pop_all()
    return slot


def update_egress(slot: Slot, policy: EgressPolicy) -> None:
    """Replace the live slot's egress policy in one transaction; connections it now denies are cut.

    NetworkError when the namespace is gone or iptables refuses the rules (the old policy
    then stays in force).
    """
    require_root("changing a sandbox's egress policy")
    nat.replace_egress_rules(slot, policy)


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

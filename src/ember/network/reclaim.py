"""Startup reclaim: remove every slot object a crashed ember left on this host.

A process killed with slots in use leaves namespaces, veths, routes and rules that make
those indices busy forever. At startup, before any slot is handed out, ember removes:

    iptables rules   host filter/nat rules whose comment is ``ember-slot-<n>``
    host routes      /32 routes into SANDBOXES_HOST_NETWORK_CIDR through a ``veth-<n>`` link
    veth links       host links of kind veth named ``veth-<n>``
    namespaces       named namespaces ``ns-<n>`` (their taps and NAT rules go with them)

Only names of exactly these shapes and rules with exactly this tag are touched. It must run
while no other ember process on the host owns slots: their slots look the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ember.network import links, nat
from ember.network.addressing import SlotConfig
from ember.network.slot import require_root

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reclaimed:
    """What ``reclaim_leftovers`` removed."""

    rules: tuple[nat.TaggedRule, ...]
    routes: tuple[links.HostRoute, ...]
    veths: tuple[str, ...]
    namespaces: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.rules) + len(self.routes) + len(self.veths) + len(self.namespaces)


def reclaim_leftovers(config: SlotConfig | None = None) -> Reclaimed:
    """Remove ember's leftover slot objects (see the module docstring) and report them."""
    require_root("reclaiming sandbox network slots")
    host_cidr = (config or SlotConfig.from_env()).host_cidr
    rules = nat.host_tagged_rules()
    nat.delete_rules(rules)
    routes = links.slot_host_routes(host_cidr)
    for route in routes:
        links.remove_host_route(route)
    veths = links.slot_veths()
    for veth in veths:
        links.remove_link(veth)
    namespaces = links.slot_namespaces()
    for namespace in namespaces:
        links.remove_namespace(namespace)
    reclaimed = Reclaimed(tuple(rules), tuple(routes), tuple(veths), tuple(namespaces))
    if reclaimed.count:
        _log.info(
            "reclaimed leftover network slots: %d rules, %d routes, veths %s, namespaces %s",
            len(rules),
            len(routes),
            ", ".join(veths) or "none",
            ", ".join(namespaces) or "none",
        )
    return reclaimed

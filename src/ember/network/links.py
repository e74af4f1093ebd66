"""Namespaces, links, addresses and routes of a slot, through rtnetlink (pyroute2).

pyroute2 speaks netlink directly, so each step is one kernel request whose error carries an
errno; there is no ``ip`` output to parse and no process per step. Requests inside a slot
go through a socket opened in its namespace by a short-lived helper process that pyroute2
forks (``IPRoute(netns=...)``); the calling thread never changes namespace.

Every ``remove_*`` is idempotent: an object that is already gone is not an error, so
teardown can run after a partial setup or twice.
"""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from ember.network.addressing import NAMESPACE_PREFIX, VETH_PREFIX, VETH_PREFIX_LEN, Slot
from ember.network.errors import NetworkError, SlotBusy

_GONE = frozenset({errno.ENODEV, errno.ENOENT, errno.ESRCH})
_SLOT_NAMESPACE = re.compile(re.escape(NAMESPACE_PREFIX) + r"[0-9]+")
_SLOT_VETH = re.compile(re.escape(VETH_PREFIX) + r"[0-9]+")
_MAIN_TABLE = 254


@dataclass(frozen=True)
class HostRoute:
    """A /32 route on the host through a slot's veth (``dst`` via ``gateway`` dev ``device``)."""

    dst: IPv4Address
    gateway: IPv4Address
    device: str


def _failed(doing: str, exc: BaseException) -> NetworkError:
    return NetworkError(f"cannot {doing}: {exc}; check that the kernel supports veth/tun and run as root")


@contextmanager
def _rtnl(namespace: str | None = None) -> Iterator[Any]:
    """An rtnetlink socket on the host, or inside ``namespace`` (never creating it)."""
    try:
        ipr = IPRoute() if namespace is None else IPRoute(netns=namespace, flags=0)
    except OSError as exc:
        raise _failed(f"open a netlink socket in {namespace or 'the host namespace'}", exc) from exc
    with ipr:
        yield ipr


def _index(ipr: Any, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise NetworkError(f"link {name} disappeared while its slot was being set up; retry")
    return int(found[0])


def create_namespace(slot: Slot) -> None:
    """Create ``ns-<idx>``; SlotBusy if it exists (it is then not ours to remove).

    The existence check comes first because pyroute2 leaks its helper process's socket pair
    when creation fails; creation still refuses an existing name if another process wins a race.
    """
    if slot.namespace in netns.listnetns():
        raise SlotBusy(slot.idx, f"network namespace {slot.namespace}")
    try:
        netns.create(slot.namespace)
    except FileExistsError as exc:
        raise SlotBusy(slot.idx, f"network namespace {slot.namespace}") from exc
    except OSError as exc:
        raise _failed(f"create network namespace {slot.namespace}", exc) from exc


def remove_namespace(name: str) -> None:
    """Remove a named namespace; everything inside it (tap, peer, NAT rules) goes with it."""
    try:
        netns.remove(name)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _failed(f"remove network namespace {name}", exc) from exc


def create_veth(slot: Slot) -> None:
    """Create ``veth-<idx>`` with its peer ``eth0`` born inside the slot's namespace, address and up."""
    with _rtnl() as ipr:
        try:
            ipr.link(
                "add",
                ifname=slot.veth,
                kind="veth",
                peer={"ifname": slot.vpeer, "net_ns_fd": slot.namespace},
            )
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise SlotBusy(slot.idx, f"host link {slot.veth}") from exc
            raise _failed(f"create veth pair {slot.veth}/{slot.vpeer}", exc) from exc
        try:
            index = _index(ipr, slot.veth)
            ipr.addr("add", index=index, address=str(slot.veth_ip), prefixlen=VETH_PREFIX_LEN)
            ipr.link("set", index=index, state="up")
        except NetlinkError as exc:
            raise _failed(f"configure {slot.veth} with {slot.veth_ip}/{VETH_PREFIX_LEN}", exc) from exc


def configure_namespace(slot: Slot) -> None:
    """In the namespace: address ``eth0``, make ``tap0`` (fixed MAC, tap IP), ``lo`` up, default route."""
    with _rtnl(slot.namespace) as ns:
        try:
            vpeer = _index(ns, slot.vpeer)
            ns.addr("add", index=vpeer, address=str(slot.vpeer_ip), prefixlen=VETH_PREFIX_LEN)
            ns.link("set", index=vpeer, state="up")
            ns.link("add", ifname=slot.tap, kind="tuntap", mode="tap")
            tap = _index(ns, slot.tap)
            ns.link("set", index=tap, address=slot.tap_mac)
            ns.addr("add", index=tap, address=str(slot.tap_ip), prefixlen=slot.tap_prefix_len)
            ns.link("set", index=tap, state="up")
            ns.link("set", index=_index(ns, "lo"), state="up")
            ns.route("add", dst="0.0.0.0/0", gateway=str(slot.veth_ip))
        except NetlinkError as exc:
            raise _failed(f"configure the links of {slot.namespace}", exc) from exc


def add_host_route(slot: Slot) -> None:
    """Route the slot's host IP to its namespace: ``<host_ip>/32 via <vpeer_ip> dev veth-<idx>``."""
    with _rtnl() as ipr:
        try:
            ipr.route(
                "add",
                dst=f"{slot.host_ip}/32",
                gateway=str(slot.vpeer_ip),
                oif=_index(ipr, slot.veth),
            )
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise NetworkError(
                    f"cannot add the host route {slot.host_ip}/32 via {slot.vpeer_ip}: another route to "
                    f"{slot.host_ip} exists; remove it (ip route del {slot.host_ip}/32) or move "
                    "SANDBOXES_HOST_NETWORK_CIDR to a free range"
                ) from exc
            raise _failed(f"add the host route {slot.host_ip}/32 via {slot.vpeer_ip}", exc) from exc


def remove_host_route(route: HostRoute) -> None:
    with _rtnl() as ipr:
        try:
            ipr.route("del", dst=f"{route.dst}/32", gateway=str(route.gateway))
        except NetlinkError as exc:
            if exc.code not in _GONE:
                raise _failed(f"remove the host route {route.dst}/32", exc) from exc


def remove_link(name: str) -> None:
    """Delete a host link; deleting one end of a veth pair deletes the other end too."""
    with _rtnl() as ipr:
        try:
            ipr.link("del", ifname=name)
        except NetlinkError as exc:
            if exc.code not in _GONE:
                raise _failed(f"remove link {name}", exc) from exc


def default_gateway_interface() -> str | None:
    """The link of the host's IPv4 default route in the main table, or None without one."""
    with _rtnl() as ipr:
        for route in ipr.route("dump", family=socket.AF_INET, table=_MAIN_TABLE, dst_len=0):
            oif = route.get("oif")
            if oif is not None:
                links = ipr.link("get", index=oif)
                return str(links[0].get("ifname"))
    return None


def slot_namespaces() -> list[str]:
    """Namespaces named like a slot's (``ns-<n>``)."""
    return sorted(name for name in netns.listnetns() if _SLOT_NAMESPACE.fullmatch(name))


def slot_veths() -> list[str]:
    """Host veth links named like a slot's (``veth-<n>``)."""
    with _rtnl() as ipr:
        names = [
            str(link.get("ifname")) for link in ipr.get_links() if link.get(("linkinfo", "kind")) == "veth"
        ]
    return sorted(name for name in names if _SLOT_VETH.fullmatch(name))


def slot_host_routes(host_cidr: IPv4Network) -> list[HostRoute]:
    """Host /32 routes into ``host_cidr`` that leave through a ``veth-<n>`` link."""
    found = []
    with _rtnl() as ipr:
        names = {int(link["index"]): str(link.get("ifname")) for link in ipr.get_links()}
        for route in ipr.route("dump", family=socket.AF_INET, table=_MAIN_TABLE, dst_len=32):
            dst, gateway = route.get("dst"), route.get("gateway")
            device = names.get(int(route.get("oif") or 0), "")
            if dst is None or gateway is None or not _SLOT_VETH.fullmatch(device):
                continue
            if IPv4Address(dst) in host_cidr:
                found.append(HostRoute(IPv4Address(dst), IPv4Address(gateway), device))
    return found

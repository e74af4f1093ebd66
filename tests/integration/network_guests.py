"""Stand-in guests for network slots, and readers of the kernel's view, for the network tests.

There is no VM behind a slot's ``tap0`` in these tests, and a tap without a VM has no
carrier. So the stand-in swaps ``tap0`` for a veth of the same name, MAC and address whose
other end is ``eth0`` at 169.254.0.21 in a separate namespace ``ember-guest-<idx>``: packets
take exactly the path they would to a VM (host route, veth, DNAT/SNAT in ``ns-<idx>``,
forwarding out of ``tap0``). The guest namespace's name is not a slot's, so a reclaim
never touches it.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from ember.network import Slot

READY_TIMEOUT_S = 10.0
GUEST_SERVER = """
import http.server, socketserver, sys

class Reply(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{sys.argv[1]} {self.client_address[0]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = socketserver.TCPServer((sys.argv[2], 0), Reply)  # HTTPServer would look up DNS names
print(server.server_address[1], flush=True)
server.serve_forever()
"""
GUEST_CONNECT = (
    "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10).close()"
)


def need_root_and_iptables() -> None:
    """Skip unless root with iptables and ip installed."""
    if os.geteuid() != 0:
        pytest.skip("network slots need root (namespaces, veth pairs, iptables)")
    for tool in ("ip", "iptables-restore", "iptables-save", "sysctl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: iproute2 / iptables / procps)")


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


def ip_json(*argv: str, namespace: str | None = None) -> list[Any]:
    """``ip -j <argv>`` on the host or in ``namespace``, decoded."""
    where = ["-n", namespace] if namespace else []
    output = run("ip", "-j", *where, *argv)
    decoded: list[Any] = json.loads(output) if output.strip() else []
    return decoded


def namespaces() -> set[str]:
    return {entry["name"] for entry in ip_json("netns", "list")}


def host_links() -> set[str]:
    return {entry["ifname"] for entry in ip_json("link", "show")}


def host_routes_to(address: IPv4Address) -> list[Any]:
    return [route for route in ip_json("route", "show", "table", "main") if route["dst"] == str(address)]


def saved_rules(table: str, namespace: str | None = None) -> list[str]:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    return [
        line for line in run(*prefix, "iptables-save", "-t", table).splitlines() if line.startswith("-A ")
    ]


def rules_tagged(tag: str, namespace: str | None = None) -> list[str]:
    return [
        rule
        for table in ("filter", "nat")
        for rule in saved_rules(table, namespace)
        if f"--comment {tag} " in rule or f'--comment "{tag}" ' in rule
    ]


def slot_leftovers(slot: Slot) -> list[str]:
    """Names of whatever of ``slot`` still exists on the host (empty when fully removed)."""
    left = [slot.namespace] if slot.namespace in namespaces() else []
    left += [slot.veth] if slot.veth in host_links() else []
    left += [f"route {route['dst']}" for route in host_routes_to(slot.host_ip)]
    return left + rules_tagged(slot.tag)


@dataclass(frozen=True)
class Guest:
    """A stand-in guest: its namespace and the port its HTTP server listens on at 169.254.0.21."""

    namespace: str
    port: int

    def connect_out(self, address: IPv4Address, port: int) -> None:
        """Open a TCP connection from the guest to ``address:port`` and close it."""
        run(
            "ip",
            "netns",
            "exec",
            self.namespace,
            sys.executable,
            "-c",
            GUEST_CONNECT,
            str(address),
            str(port),
        )


def http_get(address: IPv4Address, port: int) -> str:
    """GET / from ``address:port`` directly (no proxy), returning the body."""
    connection = http.client.HTTPConnection(str(address), port, timeout=10)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        connection.close()


def accept_one(listener: socket.socket) -> str:
    """The peer address of the next connection to ``listener``."""
    listener.settimeout(10)
    connection, (peer, _port) = listener.accept()
    connection.close()
    return str(peer)


@contextmanager
def guest_stand_in(slot: Slot, token: str, workdir: Path) -> Iterator[Guest]:
    """Replace the slot's tap with a veth to a guest namespace serving ``<token> <client ip>`` over HTTP."""
    guest_ns = f"ember-guest-{slot.idx}"
    run("ip", "netns", "add", guest_ns)
    server: subprocess.Popen[str] | None = None
    try:
        inside = ("ip", "-n", slot.namespace)
        run(*inside, "link", "del", slot.tap)
        run(*inside, "link", "add", slot.tap, "address", slot.tap_mac, "type", "veth",
            "peer", "name", "eth0", "address", slot.guest_mac, "netns", guest_ns)  # fmt: skip
        run(*inside, "addr", "add", f"{slot.tap_ip}/{slot.tap_prefix_len}", "dev", slot.tap)
        run(*inside, "link", "set", slot.tap, "up")
        guest = ("ip", "-n", guest_ns)
        run(*guest, "addr", "add", f"{slot.guest_ip}/{slot.tap_prefix_len}", "dev", "eth0")
        run(*guest, "link", "set", "eth0", "up")
        run(*guest, "link", "set", "lo", "up")
        run(*guest, "route", "add", "default", "via", str(slot.tap_ip))
        script = workdir / f"guest-server-{slot.idx}.py"
        script.write_text(GUEST_SERVER)
        server = subprocess.Popen(
            ["ip", "netns", "exec", guest_ns, sys.executable, str(script), token, str(slot.guest_ip)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        readable, _, _ = select.select([server.stdout], [], [], READY_TIMEOUT_S)
        assert readable, "the stand-in guest's HTTP server did not start"
        yield Guest(guest_ns, int(server.stdout.readline()))
    finally:
        if server is not None:
            server.kill()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()
        run("ip", "netns", "del", guest_ns)


GUEST_TRY_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
except OSError as exc:
    print(exc.strerror or exc)
"""
GUEST_FETCH = """
import http.client, sys
connection = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=10)
connection.request("GET", "/")
print(connection.getresponse().read().decode())
"""
GUEST_HOLD = """
import socket, sys
held = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
print("open", flush=True)
sys.stdin.readline()
try:
    held.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    print("answered" if held.recv(4096) else "closed")
except ConnectionResetError:
    print("reset")
except TimeoutError:
    print("timeout")
"""
PEER_SERVER = """
import http.server, socketserver, sys

class Reply(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{sys.argv[1]} {self.client_address[0]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True

server = Server(("0.0.0.0", 0), Reply)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def guest_argv(guest: Guest, script: str, *args: object) -> list[str]:
    """``python -c script args`` inside the guest's namespace."""
    return ["ip", "netns", "exec", guest.namespace, sys.executable, "-c", script, *map(str, args)]


def try_connect(guest: Guest, address: IPv4Address, port: int, timeout: float = 5.0) -> str:
    """How a TCP connect from the guest ends: ``connected``, ``refused``, ``timeout`` or the error."""
    return run(*guest_argv(guest, GUEST_TRY_CONNECT, address, port, timeout)).strip()


def guest_fetch(guest: Guest, address: IPv4Address, port: int) -> str:
    """GET / from ``address:port`` inside the guest, returning the body."""
    return run(*guest_argv(guest, GUEST_FETCH, address, port)).strip()


@contextmanager
def held_connection(guest: Guest, address: IPv4Address, port: int) -> Iterator[Callable[[], str]]:
    """A connection the guest opens now; the callable sends a request on it and says how that ended."""
    holder = subprocess.Popen(
        guest_argv(guest, GUEST_HOLD, address, port), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdin is not None and holder.stdout is not None
    stdin, stdout = holder.stdin, holder.stdout

    def finish() -> str:
        stdin.write("\n")
        stdin.flush()
        return stdout.read().strip()

    try:
        readable, _, _ = select.select([stdout], [], [], READY_TIMEOUT_S)
        assert readable and stdout.readline().strip() == "open", "the guest could not open the connection"
        yield finish
    finally:
        holder.kill()
        holder.wait()
        stdin.close()
        stdout.close()


def enable_forwarding(device: str) -> None:
    """Let the host route packets arriving on ``device`` (a setting of that link alone, gone with it)."""
    run("sysctl", "-q", "-w", f"net.ipv4.conf.{device}.forwarding=1")


def rules_tagged_anywhere(tag: str) -> list[str]:
    """Host rules in any iptables table whose comment is exactly ``tag``."""
    return [
        line
        for line in run("iptables-save").splitlines()
        if line.startswith("-A ") and (f"--comment {tag} " in line or f'--comment "{tag}" ' in line)
    ]


def link_addresses(device: str) -> list[IPv4Address]:
    """The IPv4 addresses of a host link."""
    [link] = ip_json("addr", "show", "dev", device)
    return [IPv4Address(info["local"]) for info in link["addr_info"] if info["family"] == "inet"]


@dataclass(frozen=True)
class EgressPeer:
    """A server namespace behind its own veth to the host, standing in for a destination a guest sends to.

    ``addresses[i]`` is the server's address in the i-th network, ``host_addresses[i]`` the
    host's end of it; the server answers ``<token> <client ip>`` on ``port`` at all of them.
    """

    namespace: str
    link: str
    port: int
    addresses: tuple[IPv4Address, ...]
    host_addresses: tuple[IPv4Address, ...]


def _overlapping_routes(networks: Sequence[IPv4Network]) -> list[str]:
    return [
        route["dst"]
        for route in ip_json("route", "show", "table", "main")
        if route["dst"] != "default" and any(IPv4Network(route["dst"]).overlaps(net) for net in networks)
    ]


@contextmanager
def egress_peer(
    slot: Slot, networks: Sequence[IPv4Network], token: str, workdir: Path
) -> Iterator[EgressPeer]:
    """An ``EgressPeer`` at host .1 / server .2 of each /30 in ``networks``, reachable from ``slot``'s guest.

    The host routes the guest's traffic to it: forwarding is turned on for exactly the two links
    that carry it (the slot's veth and the peer's; both die with their links, the host-wide
    ``ip_forward`` is left alone), and two FORWARD accept rules between them carry the slot's tag,
    so they go with the slot even if this context is never left. Skips when a host route
    already covers one of the networks.
    """
    if taken := _overlapping_routes(networks):
        pytest.skip(f"the host already routes {', '.join(taken)}: the egress peer's networks are not free")
    namespace, link = f"ember-egress-{slot.idx}", f"ember-eg-{slot.idx}"
    forward = [
        ("-i", slot.veth, "-o", link, "-m", "comment", "--comment", slot.tag, "-j", "ACCEPT"),
        ("-i", link, "-o", slot.veth, "-m", "comment", "--comment", slot.tag, "-j", "ACCEPT"),
    ]
    server: subprocess.Popen[str] | None = None
    run("ip", "netns", "add", namespace)
    try:
        run("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        peer = ("ip", "-n", namespace)
        for network in networks:
            host_end, server_end = network.network_address + 1, network.network_address + 2
            run("ip", "addr", "add", f"{host_end}/{network.prefixlen}", "dev", link)
            run(*peer, "addr", "add", f"{server_end}/{network.prefixlen}", "dev", "eth0")
        run("ip", "link", "set", link, "up")
        run(*peer, "link", "set", "eth0", "up")
        run(*peer, "link", "set", "lo", "up")
        run(*peer, "route", "add", "default", "via", str(networks[0].network_address + 1))
        for device in (slot.veth, link):
            enable_forwarding(device)
        for rule in forward:
            run("iptables", "-w", "-I", "FORWARD", "1", *rule)
        script = workdir / f"egress-peer-{slot.idx}.py"
        script.write_text(PEER_SERVER)
        server = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, str(script), token],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        readable, _, _ = select.select([server.stdout], [], [], READY_TIMEOUT_S)
        assert readable, "the egress peer's HTTP server did not start"
        yield EgressPeer(
            namespace,
            link,
            int(server.stdout.readline()),
            tuple(network.network_address + 2 for network in networks),
            tuple(network.network_address + 1 for network in networks),
        )
    finally:
        if server is not None:
            server.kill()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()
        for rule in forward:
            subprocess.run(["iptables", "-w", "-D", "FORWARD", *rule], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        run("ip", "netns", "del", namespace)

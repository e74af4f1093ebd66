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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
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

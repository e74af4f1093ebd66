"""Run the bundled envd agent as a subprocess on loopback, and speak raw Connect to it.

Tests drive the very file ``build_agent`` writes (the one injected into guests), started
through its shebang. Each agent gets a fresh HOME (passed through ``/init`` env vars) so
``bash -l`` in commands reads no login profile of the machine running the tests.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.envd import EnvdClient

ENVELOPE = struct.Struct(">BI")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class Agent:
    url: str
    home: Path
    process: subprocess.Popen[bytes]

    def client(self, access_token: str | None = None) -> EnvdClient:
        return EnvdClient(self.url, access_token=access_token, timeout_s=10)


@contextmanager
def running_agent(bundle: Path, home: Path, port: int | None = None) -> Iterator[Agent]:
    """Start the agent, wait for /health, set HOME through /init; stop it afterwards."""
    port = port or free_port()
    process = subprocess.Popen(
        [str(bundle), "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    agent = Agent(f"http://127.0.0.1:{port}", home, process)
    try:
        client = agent.client()
        client.wait_until_healthy(10)
        client.init(env_vars={"HOME": str(home)})
        yield agent
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def request(
    url: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, method: str = "POST"
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP exchange; error statuses are returned, not raised."""
    req = urllib.request.Request(url + path, data=body if method == "POST" else None, method=method)
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def unary_json(url: str, method: str, message: dict[str, Any], **headers: str) -> tuple[int, Any]:
    status, _, body = request(
        url, f"/{method}", json.dumps(message).encode(), {"Content-Type": "application/json", **headers}
    )
    return status, json.loads(body)


def envelopes(body: bytes) -> list[tuple[int, bytes]]:
    """Split a streaming reply into (flags, payload) pairs."""
    out = []
    offset = 0
    while offset < len(body):
        flags, length = ENVELOPE.unpack_from(body, offset)
        out.append((flags, body[offset + ENVELOPE.size : offset + ENVELOPE.size + length]))
        offset += ENVELOPE.size + length
    return out


def stream_json(url: str, method: str, message: dict[str, Any], **headers: str) -> tuple[list[Any], Any]:
    """A whole server-streaming call with the JSON codec: (messages, end-of-stream trailer)."""
    payload = json.dumps(message).encode()
    body = ENVELOPE.pack(0, len(payload)) + payload
    status, _, reply = request(
        url, f"/{method}", body, {"Content-Type": "application/connect+json", **headers}
    )
    assert status == 200, reply
    frames = envelopes(reply)
    assert frames and frames[-1][0] == 2, f"no end-of-stream envelope in {reply!r}"
    return [json.loads(data) for flags, data in frames[:-1]], json.loads(frames[-1][1])

"""A small synchronous QMP client (QEMU Machine Protocol) over a unix socket.

Wire format: one JSON object per line (QEMU ends each with CRLF)::

    server -> {"QMP": {"version": {...}, "capabilities": [...]}}      greeting, once
    client -> {"execute": "qmp_capabilities"}                          leaves negotiation mode
    client -> {"execute": "<command>", "arguments": {...}, "id": N}
    server -> {"return": <value>, "id": N}  |  {"error": {"class": ..., "desc": ...}, "id": N}
    server -> {"event": "<NAME>", "data": {...}, "timestamp": {...}}   at any time

Events that arrive while waiting for a reply are kept and returned by ``wait_event``.
Guarantees: every method either completes or raises EmberError; after an error other than
a QEMU ``error`` reply the connection is closed (a half-read stream cannot be trusted).
"""

from __future__ import annotations

import json
import socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ember.errors import VmError

JsonObject = dict[str, Any]


class QmpClient:
    """A QMP session past capability negotiation."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self._sock = sock
        self._path = path
        self._buffer = b""
        self._events: deque[JsonObject] = deque()
        self._next_id = 1
        self.greeting: JsonObject = {}

    @classmethod
    def connect(cls, path: Path, timeout_s: float, *, alive: Callable[[], bool] | None = None) -> QmpClient:
        """Connect to the QMP socket at ``path``, retrying until it accepts or ``timeout_s`` ends.

        ``alive`` is polled between attempts; when it returns
        False the VMM has exited and waiting longer is pointless.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                break
            except OSError as exc:
                sock.close()
                if time.monotonic() >= deadline or (alive is not None and not alive()):
                    raise VmError(f"cannot connect to QMP socket {path}: {exc}; did QEMU start?") from exc
                time.sleep(0.02)
        client = cls(sock, path)
        client.greeting = client._read_message(max(deadline - time.monotonic(), 1.0))
        if "QMP" not in client.greeting:
            client.close()
            raise VmError(f"{path} did not greet with QMP: got {client.greeting!r}")
        client.execute("qmp_capabilities", timeout_s=max(deadline - time.monotonic(), 1.0))
        return client

    def execute(self, command: str, arguments: JsonObject | None = None, *, timeout_s: float = 10.0) -> Any:
        """Run ``command``; its ``return`` value. A QEMU ``error`` reply raises EmberError."""
        request: JsonObject = {"execute": command, "id": self._next_id}
        if arguments is not None:
            request["arguments"] = arguments
        self._next_id += 1
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as exc:
            self.close()
            raise VmError(f"QMP {command} failed: {exc}; QEMU has probably exited") from exc
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._read_message(deadline - time.monotonic())
            if "event" in message:
                self._events.append(message)
                continue
            if message.get("id") != request["id"]:
                continue
            if "error" in message:
                error = message["error"]
                raise VmError(f"QEMU refused {command}: {error.get('class')}: {error.get('desc')}")
            return message.get("return")

    def wait_event(self, name: str, timeout_s: float) -> JsonObject:
        """The next event called ``name`` (earlier events of other names are dropped)."""
        deadline = time.monotonic() + timeout_s
        while True:
            while self._events:
                event = self._events.popleft()
                if event.get("event") == name:
                    return event
            message = self._read_message(deadline - time.monotonic())
            if "event" in message:
                self._events.append(message)

    def close(self) -> None:
        """Close the socket; safe to call twice."""
        self._sock.close()

    def _read_message(self, timeout_s: float) -> JsonObject:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.close()
                raise VmError(f"QMP on {self._path}: no reply within {timeout_s:.1f} s; QEMU is stuck")
            try:
                self._sock.settimeout(remaining)
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                self.close()
                raise VmError(f"QMP on {self._path} failed: {exc}") from exc
            if not chunk:
                self.close()
                raise VmError(f"QMP on {self._path}: QEMU closed the connection (it has exited)")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except json.JSONDecodeError as exc:
            self.close()
            raise VmError(f"QMP on {self._path} sent a line that is not JSON: {line[:200]!r}") from exc
        if not isinstance(message, dict):
            self.close()
            raise VmError(f"QMP on {self._path} sent {message!r}, expected a JSON object")
        return message

"""A typed client for Firecracker's REST API on its unix socket.

Wire format: HTTP/1.1 on ``--api-sock``; request bodies are JSON (``config.py``). Firecracker
answers ``204 No Content`` to a successful PUT/PATCH, ``200`` with a JSON body to a GET, and
``4xx`` with ``{"fault_message": "..."}`` when it refuses::

    PUT /machine-config {"vcpu_count": 0, ...}
    -> HTTP/1.1 400   {"fault_message": "The vCPU number is invalid! ..."}

Guarantees: each call opens its own connection (cheap on a unix socket, and a call that
timed out half-way cannot poison the next one), and either returns or raises VmError
carrying the method, path and Firecracker's fault message.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

from ember.errors import VmError
from ember.vmm.firecracker.config import (
    BootSource,
    Drive,
    JsonObject,
    MachineConfig,
    Metrics,
    MmdsConfig,
    NetworkInterface,
    SnapshotCreate,
    SnapshotLoad,
    Vsock,
)

DEFAULT_TIMEOUT_S = 10.0
# Writing all guest RAM for a Full snapshot takes ~3 s per GiB on the study's host.
SNAPSHOT_TIMEOUT_S = 300.0


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket: the host name only fills the Host header."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class FirecrackerApi:
    """The API of one Firecracker process, reached through ``socket_path``."""

    def __init__(self, socket_path: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    def request(
        self, method: str, path: str, body: JsonObject | None = None, *, timeout_s: float | None = None
    ) -> Any:
        """Send one request; the decoded JSON body (None for 204). Refusals raise VmError."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        connection = _UnixHTTPConnection(self.socket_path, timeout_s or self.timeout_s)
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            status = response.status
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise VmError(
                f"Firecracker API {method} {path} on {self.socket_path} failed: {exc!r}; "
                "Firecracker has probably exited (see its log)"
            ) from exc
        finally:
            connection.close()
        if status >= 300:
            raise VmError(f"Firecracker refused {method} {path} (HTTP {status}): {_fault(data)}")
        return _decode(data, method, path)

    def put_metrics(self, metrics: Metrics) -> None:
        self.request("PUT", "/metrics", metrics.to_json())

    def put_boot_source(self, boot_source: BootSource) -> None:
        self.request("PUT", "/boot-source", boot_source.to_json())

    def put_drive(self, drive: Drive) -> None:
        self.request("PUT", f"/drives/{drive.drive_id}", drive.to_json())

    def put_network_interface(self, interface: NetworkInterface) -> None:
        self.request("PUT", f"/network-interfaces/{interface.iface_id}", interface.to_json())

    def put_mmds_config(self, mmds: MmdsConfig) -> None:
        self.request("PUT", "/mmds/config", mmds.to_json())

    def put_mmds(self, metadata: JsonObject) -> None:
        """Replace the whole MMDS data store (the guest reads it at 169.254.169.254)."""
        self.request("PUT", "/mmds", metadata)

    def put_machine_config(self, machine: MachineConfig) -> None:
        self.request("PUT", "/machine-config", machine.to_json())

    def put_vsock(self, vsock: Vsock) -> None:
        self.request("PUT", "/vsock", vsock.to_json())

    def start_instance(self) -> None:
        self.request("PUT", "/actions", {"action_type": "InstanceStart"})

    def pause_vm(self) -> None:
        self.request("PATCH", "/vm", {"state": "Paused"})

    def resume_vm(self) -> None:
        self.request("PATCH", "/vm", {"state": "Resumed"})

    def create_snapshot(self, snapshot: SnapshotCreate) -> None:
        self.request("PUT", "/snapshot/create", snapshot.to_json(), timeout_s=SNAPSHOT_TIMEOUT_S)

    def load_snapshot(self, snapshot: SnapshotLoad, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Load a snapshot; with a Uffd backend this returns only once faults are being served."""
        self.request("PUT", "/snapshot/load", snapshot.to_json(), timeout_s=timeout_s)

    def describe_instance(self) -> JsonObject:
        """``GET /``: ``{id, state, vmm_version, app_name}``."""
        return _object(self.request("GET", "/"), "/")

    def vm_config(self) -> JsonObject:
        """``GET /vm/config``: the whole configuration as Firecracker holds it."""
        return _object(self.request("GET", "/vm/config"), "/vm/config")


def _decode(data: bytes, method: str, path: str) -> Any:
    if not data.strip():
        return None
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise VmError(
            f"Firecracker API {method} {path} answered with a body that is not JSON: {data[:200]!r}"
        ) from exc


def _fault(data: bytes) -> str:
    try:
        decoded = json.loads(data)
    except json.JSONDecodeError:
        decoded = None
    if isinstance(decoded, dict) and isinstance(decoded.get("fault_message"), str):
        return str(decoded["fault_message"])
    return data.decode(errors="replace").strip() or "(no fault message)"


def _object(value: Any, path: str) -> JsonObject:
    if not isinstance(value, dict):
        raise VmError(f"Firecracker API GET {path} returned {value!r}, expected a JSON object")
    return value

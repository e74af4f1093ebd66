"""The API client against a scripted HTTP server on a unix socket (no Firecracker)."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from ember.errors import EmberError
from ember.vmm.firecracker import (
    BootSource,
    Drive,
    FirecrackerApi,
    MachineConfig,
    MemoryBackend,
    MemoryBackendType,
    NetworkInterface,
    SnapshotCreate,
    SnapshotLoad,
    SnapshotType,
)


@dataclass
class _Script:
    """What the fake Firecracker answers (status, raw body) and what it received."""

    replies: dict[tuple[str, str], tuple[int, bytes]] = field(default_factory=dict)
    received: list[tuple[str, str, object]] = field(default_factory=list)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, script: _Script) -> None:
        self.script = script
        super().__init__(path, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.server.script.received.append((self.command, self.path, json.loads(raw) if raw else None))
        status, body = self.server.script.replies.get((self.command, self.path), (204, b""))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_PATCH = _serve

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FirecrackerApi, _Script]]:
    script = _Script()
    server = _Server(str(tmp_path / "fc.sock"), script)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield FirecrackerApi(tmp_path / "fc.sock", timeout_s=5), script
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_each_call_sends_its_method_path_and_json_body(fake: tuple[FirecrackerApi, _Script]) -> None:
    api, script = fake
    api.put_boot_source(BootSource(Path("/k"), "quiet"))
    api.put_drive(Drive("rootfs", Path("/r"), is_root_device=True))
    api.put_network_interface(NetworkInterface("eth0", "tap0"))
    api.put_machine_config(MachineConfig(mem_size_mib=64, track_dirty_pages=True))
    api.start_instance()
    api.pause_vm()
    api.resume_vm()
    api.create_snapshot(SnapshotCreate(Path("/s"), Path("/m"), SnapshotType.DIFF))
    api.load_snapshot(SnapshotLoad(Path("/s"), MemoryBackend(MemoryBackendType.UFFD, Path("/u.sock"))))
    assert script.received == [
        ("PUT", "/boot-source", {"kernel_image_path": "/k", "boot_args": "quiet"}),
        ("PUT", "/drives/rootfs", Drive("rootfs", Path("/r"), is_root_device=True).to_json()),
        ("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap0"}),
        ("PUT", "/machine-config", MachineConfig(mem_size_mib=64, track_dirty_pages=True).to_json()),
        ("PUT", "/actions", {"action_type": "InstanceStart"}),
        ("PATCH", "/vm", {"state": "Paused"}),
        ("PATCH", "/vm", {"state": "Resumed"}),
        ("PUT", "/snapshot/create", {"snapshot_type": "Diff", "snapshot_path": "/s", "mem_file_path": "/m"}),
        (
            "PUT",
            "/snapshot/load",
            {
                "snapshot_path": "/s",
                "mem_backend": {"backend_type": "Uffd", "backend_path": "/u.sock"},
                "enable_diff_snapshots": False,
                "resume_vm": False,
            },
        ),
    ]


def test_a_get_returns_the_decoded_json(fake: tuple[FirecrackerApi, _Script]) -> None:
    api, script = fake
    info = {
        "id": "anonymous-instance",
        "state": "Not started",
        "vmm_version": "1.12.1",
        "app_name": "Firecracker",
    }
    script.replies[("GET", "/")] = (200, json.dumps(info).encode())
    assert api.describe_instance() == info
    assert script.received == [("GET", "/", None)]


def test_a_refusal_raises_with_firecrackers_fault_message(fake: tuple[FirecrackerApi, _Script]) -> None:
    api, script = fake
    fault = "Machine config error: The number of vCPUs must be greater than 0"
    script.replies[("PUT", "/machine-config")] = (400, json.dumps({"fault_message": fault}).encode())
    with pytest.raises(EmberError) as caught:
        api.put_machine_config(MachineConfig(vcpu_count=0))
    assert str(caught.value) == f"Firecracker refused PUT /machine-config (HTTP 400): {fault}"


def test_a_refusal_without_a_fault_message_quotes_the_body(fake: tuple[FirecrackerApi, _Script]) -> None:
    api, script = fake
    script.replies[("PATCH", "/vm")] = (500, b"internal trouble")
    with pytest.raises(EmberError, match=r"refused PATCH /vm \(HTTP 500\): internal trouble"):
        api.pause_vm()


def test_a_reply_that_is_not_json_is_an_error(fake: tuple[FirecrackerApi, _Script]) -> None:
    api, script = fake
    script.replies[("GET", "/vm/config")] = (200, b"<html>")
    with pytest.raises(EmberError, match="not JSON"):
        api.vm_config()


def test_a_get_that_is_not_an_object_is_an_error(fake: tuple[FirecrackerApi, _Script]) -> None:
    api, script = fake
    script.replies[("GET", "/vm/config")] = (200, b"[1, 2]")
    with pytest.raises(EmberError, match="expected a JSON object"):
        api.vm_config()


def test_a_socket_nobody_listens_on_says_firecracker_has_exited(tmp_path: Path) -> None:
    api = FirecrackerApi(tmp_path / "gone.sock", timeout_s=1)
    with pytest.raises(
        EmberError, match=r"PUT /actions on .*gone.sock failed: .*Firecracker has probably exited"
    ):
        api.start_instance()

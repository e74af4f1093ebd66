"""FirecrackerVm's lifecycle against a fake Firecracker (a script serving the API; no KVM)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from ember.errors import EmberError
from ember.vmm import Vm, VmSnapshot, VmState
from ember.vmm.firecracker import (
    BootSource,
    Drive,
    FirecrackerConfig,
    FirecrackerVm,
    MachineConfig,
    MemoryBackend,
    MemoryBackendType,
    Metrics,
    MmdsConfig,
    NetworkInterface,
    Vsock,
)

# Serves every request with 204 (GET /vm/config with its vsock), records it to <socket>.requests,
# answers 400 with a fault message to the "METHOD /path" in FAKE_FC_REFUSE, and prints a
# console line on InstanceStart.
FAKE_FIRECRACKER = """\
import json, os, socketserver, sys
from http.server import BaseHTTPRequestHandler
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
sock = args["--api-sock"]
assert os.path.exists(args["--log-path"]), "log path must exist"
refuse = os.environ.get("FAKE_FC_REFUSE", "")
vsock = None
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def serve(self):
        global vsock
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        with open(sock + ".requests", "a") as log:
            log.write(json.dumps([self.command, self.path, body]) + "\\n")
        status, reply = 204, b""
        if f"{self.command} {self.path}" == refuse:
            status, reply = 400, json.dumps({"fault_message": "fake refusal"}).encode()
        elif self.path == "/vsock":
            vsock = body
        elif self.path == "/vm/config":
            status, reply = 200, json.dumps({"vsock": vsock}).encode()
        elif self.path == "/actions":
            print("TINY-GUEST-READY", flush=True)
        self.send_response(status)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
    do_GET = do_PUT = do_PATCH = serve
    def address_string(self):
        return "unix"
    def log_message(self, *args):
        pass
socketserver.UnixStreamServer(sock, Handler).serve_forever()
"""


@pytest.fixture
def fake_binary(tmp_path: Path) -> Path:
    path = tmp_path / "fake-firecracker"
    path.write_text(f"#!{sys.executable}\n{FAKE_FIRECRACKER}")
    path.chmod(0o755)
    return path


def _requests(vm: FirecrackerVm) -> list[list[object]]:
    """Every request the fake received: ``[method, path, body]``."""
    log = vm.run_dir / "firecracker.sock.requests"
    return [json.loads(line) for line in log.read_text().splitlines()]


def _full_config(tmp_path: Path) -> FirecrackerConfig:
    return FirecrackerConfig(
        boot_source=BootSource(Path("/k/vmlinux.bin"), "quiet"),
        machine=MachineConfig(mem_size_mib=64),
        drives=(Drive("rootfs", Path("/fc-vm/rootfs.ext4"), is_root_device=True),),
        network_interfaces=(NetworkInterface("eth0", "tap0"),),
        mmds=MmdsConfig(("eth0",)),
        vsock=Vsock(3, tmp_path / "vsock.sock"),
        metrics=Metrics(tmp_path / "metrics"),
        name="fake",
    )


def test_the_firecracker_driver_implements_the_vm_interface(tmp_path: Path, fake_binary: Path) -> None:
    assert isinstance(FirecrackerVm(_full_config(tmp_path), tmp_path, binary=fake_binary), Vm)


def test_a_cold_boot_configures_in_the_seeds_order_then_starts(tmp_path: Path, fake_binary: Path) -> None:
    with FirecrackerVm(_full_config(tmp_path), tmp_path / "run", binary=fake_binary) as vm:
        vm.boot()
        assert vm.state is VmState.RUNNING
        assert vm.wait_for_console("READY", timeout_s=10) == "TINY-GUEST-READY"
        sent = [(method, path) for method, path, _ in _requests(vm)]
    assert sent == [
        ("PUT", "/metrics"),
        ("PUT", "/boot-source"),
        ("PUT", "/drives/rootfs"),
        ("PUT", "/network-interfaces/eth0"),
        ("PUT", "/mmds/config"),
        ("PUT", "/machine-config"),
        ("PUT", "/vsock"),
        ("PUT", "/actions"),
    ]
    assert vm.state is VmState.STOPPED
    assert not (tmp_path / "run" / "firecracker.sock").exists()


def test_a_refused_configuration_stops_the_vm_and_quotes_firecracker(
    tmp_path: Path, fake_binary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FC_REFUSE", "PUT /drives/rootfs")
    vm = FirecrackerVm(_full_config(tmp_path), tmp_path / "run", binary=fake_binary)
    with pytest.raises(
        EmberError, match=r"did not start: Firecracker refused PUT /drives/rootfs .*fake refusal"
    ):
        vm.boot()
    assert vm.state is VmState.STOPPED
    assert not (tmp_path / "run" / "firecracker.sock").exists()


def test_a_firecracker_that_exits_at_once_is_reported_with_what_it_printed(tmp_path: Path) -> None:
    binary = tmp_path / "broken"
    binary.write_text("#!/bin/sh\necho 'Error: cannot bind the API socket' >&2\nexit 1\n")
    binary.chmod(0o755)
    vm = FirecrackerVm(_full_config(tmp_path), tmp_path / "run", binary=binary)
    with pytest.raises(EmberError, match="did not come up: Firecracker exited before opening") as caught:
        vm.boot()
    assert "cannot bind the API socket" in str(caught.value)
    assert vm.state is VmState.STOPPED


def test_a_binary_that_does_not_exist_says_how_to_get_one(tmp_path: Path) -> None:
    vm = FirecrackerVm(_full_config(tmp_path), tmp_path / "run", binary=tmp_path / "nothing")
    with pytest.raises(EmberError, match="provision_firecracker"):
        vm.boot()


def test_calls_in_the_wrong_state_name_the_state_and_change_nothing(
    tmp_path: Path, fake_binary: Path
) -> None:
    vm = FirecrackerVm(_full_config(tmp_path), tmp_path / "run", binary=fake_binary, name="box")
    with pytest.raises(EmberError, match="cannot pause VM box: it is created, pause needs it running"):
        vm.pause()
    with vm:
        vm.boot()
        with pytest.raises(
            EmberError, match="cannot snapshot VM box: it is running, snapshot needs it paused"
        ):
            vm.snapshot(tmp_path / "snapfile")
        with pytest.raises(EmberError, match="cannot boot VM box: it is running"):
            vm.boot()
        assert vm.state is VmState.RUNNING
    assert vm.stop() == vm.stop()


def test_a_snapshot_puts_the_memory_beside_the_state_file_by_default(
    tmp_path: Path, fake_binary: Path
) -> None:
    with FirecrackerVm(_full_config(tmp_path), tmp_path / "run", binary=fake_binary) as vm:
        vm.boot()
        vm.pause()
        snapshot = vm.snapshot(tmp_path / "snapfile")
        assert vm.state is VmState.PAUSED
        assert _requests(vm)[-2:] == [
            ["PATCH", "/vm", {"state": "Paused"}],
            [
                "PUT",
                "/snapshot/create",
                {
                    "snapshot_type": "Full",
                    "snapshot_path": str(tmp_path / "snapfile"),
                    "mem_file_path": str(tmp_path / "snapfile.mem"),
                },
            ],
        ]
    assert snapshot == VmSnapshot(tmp_path / "snapfile", tmp_path / "snapfile.mem", 64 << 20)


def test_a_restore_loads_the_memory_file_and_resumes(tmp_path: Path, fake_binary: Path) -> None:
    snapshot = VmSnapshot(tmp_path / "snapfile", tmp_path / "memfile", 64 << 20)
    with FirecrackerVm.restore(snapshot, tmp_path / "run", binary=fake_binary) as vm:
        assert vm.state is VmState.RUNNING
        assert vm.memory_bytes == 64 << 20
        sent = _requests(vm)
    assert sent[0] == [
        "PUT",
        "/snapshot/load",
        {
            "snapshot_path": str(tmp_path / "snapfile"),
            "mem_backend": {"backend_type": "File", "backend_path": str(tmp_path / "memfile")},
            "enable_diff_snapshots": False,
            "resume_vm": True,
        },
    ]
    assert [path for _, path, _ in sent[1:]] == ["/vm/config"]


def test_a_restore_can_stay_paused_and_take_a_uffd_backend(tmp_path: Path, fake_binary: Path) -> None:
    snapshot = VmSnapshot(tmp_path / "snapfile", tmp_path / "memfile", 64 << 20)
    uffd = MemoryBackend(MemoryBackendType.UFFD, tmp_path / "uffd.sock")
    with FirecrackerVm.restore(
        snapshot,
        tmp_path / "run",
        binary=fake_binary,
        memory_backend=uffd,
        enable_diff_snapshots=True,
        resume=False,
    ) as vm:
        assert vm.state is VmState.PAUSED
        body = _requests(vm)[0][2]
        vm.resume()
        assert vm.state is VmState.RUNNING
    assert isinstance(body, dict)
    assert body["mem_backend"] == {"backend_type": "Uffd", "backend_path": str(tmp_path / "uffd.sock")}
    assert (body["enable_diff_snapshots"], body["resume_vm"]) == (True, False)


def test_a_refused_restore_leaves_no_process(
    tmp_path: Path, fake_binary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FC_REFUSE", "PUT /snapshot/load")
    snapshot = VmSnapshot(tmp_path / "snapfile", tmp_path / "memfile", 64 << 20)
    with pytest.raises(EmberError, match=r"cannot restore .*snapfile: Firecracker refused .*fake refusal"):
        FirecrackerVm.restore(snapshot, tmp_path / "run", binary=fake_binary)
    assert not (tmp_path / "run" / "firecracker.sock").exists()


def test_waiting_for_a_marker_that_never_comes_times_out_with_the_console_tail(
    tmp_path: Path, fake_binary: Path
) -> None:
    with FirecrackerVm(_full_config(tmp_path), tmp_path / "run", binary=fake_binary) as vm:
        vm.boot()
        with pytest.raises(
            EmberError, match=r"did not print 'NEVER' within 0.2 s; console .*TINY-GUEST-READY"
        ):
            vm.wait_for_console("NEVER", timeout_s=0.2)


def test_stop_removes_the_vsock_socket_the_vm_created(tmp_path: Path, fake_binary: Path) -> None:
    vm = FirecrackerVm(_full_config(tmp_path), tmp_path / "run", binary=fake_binary)
    with vm:
        vm.boot()
        (tmp_path / "vsock.sock").write_bytes(b"")  # the fake does not bind it; Firecracker would
        pid = vm.pid
    assert not (tmp_path / "vsock.sock").exists()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

"""The orchestrator daemon as the VM tests drive it: started on free loopback ports with its own
base path, reached with the gRPC stubs generated from ember's .proto files, stopped with SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ember.envd.client import EnvdClient
from ember.guest import cache_dir
from ember.rpc import orchestrator_pb2 as pb
from ember.rpc import orchestrator_pb2_grpc

COUNTER = (
    "nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.new;"
    " mv /tmp/counter.new /tmp/counter; sleep 0.2; done' >/dev/null 2>&1 &"
)
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def environment(base: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HOST_KERNELS_DIR": str(cache_dir() / "kernels"),
        "ORCHESTRATOR_BASE_PATH": str(base),
        # Twenty TCG guests waking at once on two cores may need more than the default 10 s.
        "ENVD_TIMEOUT": "60s",
    }


def create_request(sandbox_id: str, build: str, **config: object) -> pb.SandboxCreateRequest:
    """A Create of ``build`` as the tests send it: the token ``token-<id>``, SANDBOX_NAME set."""
    return pb.SandboxCreateRequest(
        sandbox=pb.SandboxConfig(
            sandbox_id=sandbox_id,
            build_id=build,
            envd_access_token=f"token-{sandbox_id}",
            env_vars={"SANDBOX_NAME": sandbox_id},
            **config,  # type: ignore[arg-type]
        )
    )


def qemu_pids(sandbox_id: str) -> list[int]:
    """The VMM processes of one sandbox (named ``sandbox-<id>``): none once it is gone."""
    pattern = f"sandbox-{sandbox_id}"
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]


def make_build(
    root: Path, start_cmd: str = COUNTER, ready_cmd: str = "test -s /tmp/counter"
) -> tuple[Path, str]:
    """A small build (512 MiB guest, 4 KiB pages) in ``root/store`` whose start command keeps a counter."""
    storage = root / "store"
    build = str(uuid.uuid4())
    created = subprocess.run(
        [sys.executable, "-m", "ember", "create-build", "-to-build", build, "-storage", str(storage),
         "-hugepages=false", "-memory", "512", "-disk", "512",
         "-start-cmd", start_cmd, "-ready-cmd", ready_cmd],
        capture_output=True, text=True, timeout=900, env=environment(root / "create"), check=False,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr + created.stdout
    return storage, build


@dataclass
class Daemon:
    process: subprocess.Popen[str]
    stub: orchestrator_pb2_grpc.SandboxServiceStub
    channel: grpc.Channel
    grpc_port: int
    proxy_port: int
    base: Path
    log: Path

    def envd(self, sandbox_id: str, token: str) -> EnvdClient:
        """envd of ``sandbox_id`` through the daemon's node proxy (header routing, Host an IP)."""
        return EnvdClient(
            f"http://127.0.0.1:{self.proxy_port}",
            access_token=token,
            headers={"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": "49983"},
        )

    def create(self, sandbox_id: str, build: str, *, snapshot: bool = False, token: str = "") -> str:
        token = token or f"token-{sandbox_id}"
        config = pb.SandboxConfig(
            sandbox_id=sandbox_id, build_id=build, snapshot=snapshot, envd_access_token=token,
            env_vars={"SANDBOX_NAME": sandbox_id},
        )  # fmt: skip
        self.stub.Create(pb.SandboxCreateRequest(sandbox=config), timeout=START_TIMEOUT_S)
        return token

    def listed(self) -> list[str]:
        return sorted(entry.sandbox_id for entry in self.stub.List(empty_pb2.Empty()).sandboxes)

    def workspaces(self) -> list[str]:
        root = self.base / "sandbox"
        return sorted(entry.name for entry in root.iterdir()) if root.is_dir() else []


def start_daemon(
    storage: Path | str, base: Path, log: Path, *flags: str, env: Mapping[str, str] | None = None
) -> Daemon:
    """``ember orchestrator`` on free loopback ports; ``flags`` are more of its flags, ``env`` more
    of its environment (a bucket's endpoint and credentials)."""
    grpc_port, proxy_port = free_port(), free_port()
    with log.open("a") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "ember", "orchestrator", "-storage", str(storage), "-listen", "127.0.0.1",
             "-grpc-port", str(grpc_port), "-proxy-port", str(proxy_port), *flags],
            stdout=handle, stderr=handle, text=True, env={**environment(base), **(env or {})},
        )  # fmt: skip
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log.read_text()
        try:
            answer = health.Check(health_pb2.HealthCheckRequest(service="SandboxService"), timeout=2)
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                break
        except grpc.RpcError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    return Daemon(
        process, orchestrator_pb2_grpc.SandboxServiceStub(channel), channel, grpc_port, proxy_port, base, log
    )


def stop_daemon(daemon: Daemon) -> int:
    daemon.channel.close()
    if daemon.process.poll() is None:
        daemon.process.send_signal(signal.SIGTERM)
    return daemon.process.wait(120)


@contextlib.contextmanager
def running_daemon(
    storage: Path | str, tmp_path: Path, *flags: str, env: Mapping[str, str] | None = None
) -> Iterator[Daemon]:
    """A daemon for one test; on the way out it must stop cleanly and leave no workspace."""
    started = start_daemon(storage, tmp_path / "base", tmp_path / "daemon.log", *flags, env=env)
    try:
        yield started
    finally:
        code = stop_daemon(started)
    assert code == 0, started.log.read_text()[-3000:]
    assert started.workspaces() == [], "the daemon left sandbox workspaces behind"

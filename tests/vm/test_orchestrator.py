"""The node daemon end to end: ``ember orchestrator`` driven over gRPC with the stubs generated from
ember's .proto files, sandbox traffic through its node proxy, real QEMU guests.

One create-build (module fixture) makes a build whose start command leaves a counter running,
so "the process is still running" is something the guest shows. Everything a test checks
for leftovers is its own: its sandbox ids, its daemon's workspaces and its QEMUs.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from orchestrator_daemon import Daemon, make_build, qemu_pids, running_daemon, start_daemon, stop_daemon

from ember.rpc import orchestrator_pb2 as pb

pytestmark = [
    pytest.mark.vm,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes need root for network namespaces and mounts"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return make_build(tmp_path_factory.mktemp("orchestrator"))


@pytest.fixture
def daemon(store: tuple[Path, str], tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(store[0], tmp_path) as started:
        yield started


def _mounts_under(base: Path) -> list[str]:
    with open("/proc/self/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(str(base))]


def test_sandboxes_run_pause_resume_checkpoint_and_leave_nothing(
    daemon: Daemon, store: tuple[Path, str]
) -> None:
    storage, build = store
    ids = ["orcha", "orchb", "orchc"]
    tokens = {sandbox_id: daemon.create(sandbox_id, build) for sandbox_id in ids}
    assert daemon.listed() == ids
    for sandbox_id in ids:
        result = daemon.envd(sandbox_id, tokens[sandbox_id]).run(
            'echo "$SANDBOX_NAME" > /root/me; cat /root/me'
        )
        assert result.exit_code == 0
        assert result.stdout.decode().strip() == sandbox_id

    paused = str(uuid.uuid4())
    reply = daemon.stub.Pause(pb.SandboxPauseRequest(sandbox_id="orcha", build_id=paused), timeout=120)
    assert reply.scheduling_metadata.build_id == paused
    assert build in reply.scheduling_metadata.memfile_build_ids
    assert daemon.listed() == ["orchb", "orchc"]
    assert (storage / "templates" / paused / "metadata.json").exists()
    assert qemu_pids("orcha") == []

    token = daemon.create("orchd", paused, snapshot=True)
    resumed = daemon.envd("orchd", token)
    assert resumed.read_file("/root/me").decode().strip() == "orcha"
    first = int(resumed.read_file("/tmp/counter"))
    time.sleep(1.0)
    assert int(resumed.read_file("/tmp/counter")) > first, "the counter process did not survive the pause"

    checkpoint = str(uuid.uuid4())
    daemon.stub.Checkpoint(pb.SandboxCheckpointRequest(sandbox_id="orchb", build_id=checkpoint), timeout=120)
    assert "orchb" in daemon.listed()
    assert daemon.envd("orchb", tokens["orchb"]).run("cat /root/me").stdout.decode().strip() == "orchb"
    token = daemon.create("orche", checkpoint, snapshot=True)
    assert daemon.envd("orche", token).read_file("/root/me").decode().strip() == "orchb"

    live = daemon.listed()
    assert live == ["orchb", "orchc", "orchd", "orche"]
    for sandbox_id in live:
        daemon.stub.Delete(pb.SandboxDeleteRequest(sandbox_id=sandbox_id))
    assert daemon.listed() == []
    assert all(qemu_pids(sandbox_id) == [] for sandbox_id in [*ids, "orchd", "orche"])
    assert daemon.workspaces() == []
    assert _mounts_under(daemon.base) == []


def test_bad_requests_get_the_right_status_and_the_daemon_goes_on(
    daemon: Daemon, store: tuple[Path, str]
) -> None:
    _, build = store

    def status(call: object) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as failed:
            assert callable(call)
            call()
        code: grpc.StatusCode = failed.value.code()
        return code

    def create(**config: object) -> None:
        daemon.stub.Create(pb.SandboxCreateRequest(sandbox=pb.SandboxConfig(**config)), timeout=60)

    missing = str(uuid.uuid4())
    assert status(lambda: create(sandbox_id="bad1", build_id=missing)) == grpc.StatusCode.NOT_FOUND
    assert status(lambda: create(sandbox_id="Bad Id!", build_id=build)) == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        status(lambda: create(sandbox_id="bad2", build_id="not-a-uuid")) == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        status(lambda: create(sandbox_id="bad3", build_id=build, vcpu=7))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert status(lambda: create(sandbox_id="bad4", build_id=build, ram_mb=4096)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    daemon.create("good1", build)
    assert status(lambda: create(sandbox_id="good1", build_id=build)) == grpc.StatusCode.ALREADY_EXISTS
    assert (
        status(lambda: daemon.stub.Pause(pb.SandboxPauseRequest(sandbox_id="nobody", build_id=missing)))
        == grpc.StatusCode.NOT_FOUND
    )
    # Pausing into an existing build is refused before anything happens: the sandbox runs on.
    assert (
        status(lambda: daemon.stub.Pause(pb.SandboxPauseRequest(sandbox_id="good1", build_id=build)))
        == grpc.StatusCode.ALREADY_EXISTS
    )
    assert daemon.listed() == ["good1"]
    assert status(lambda: daemon.stub.Delete(pb.SandboxDeleteRequest(sandbox_id="nobody"))) == (
        grpc.StatusCode.NOT_FOUND
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.proxy_port}/health", timeout=10) as answer:
        assert answer.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.proxy_port}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    assert "ember_sandboxes_running 1.0" in metrics
    assert 'ember_grpc_errors_total{code="NOT_FOUND",method="Create"} 1.0' in metrics
    daemon.stub.Delete(pb.SandboxDeleteRequest(sandbox_id="good1"))


def test_a_sandbox_whose_qemu_is_killed_leaves_the_list_and_the_others_go_on(
    daemon: Daemon, store: tuple[Path, str]
) -> None:
    _, build = store
    tokens = {sandbox_id: daemon.create(sandbox_id, build) for sandbox_id in ("crasha", "crashb")}
    [pid] = qemu_pids("crasha")
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    while "crasha" in daemon.listed():
        assert time.monotonic() - killed < 2.0, "the dead sandbox stayed in List"
        time.sleep(0.05)
    assert daemon.listed() == ["crashb"]
    assert daemon.envd("crashb", tokens["crashb"]).run("echo alive").stdout == b"alive\n"
    assert "failed" in daemon.log.read_text()
    daemon.stub.Delete(pb.SandboxDeleteRequest(sandbox_id="crashb"))


def test_sigkill_of_the_daemon_then_a_restart_leaves_no_orphan(
    store: tuple[Path, str], tmp_path: Path
) -> None:
    storage, build = store
    base, log = tmp_path / "base", tmp_path / "daemon.log"
    first = start_daemon(storage, base, log)
    ids = ["killa", "killb", "killc"]
    for sandbox_id in ids:
        first.create(sandbox_id, build)
    qemus = [pid for sandbox_id in ids for pid in qemu_pids(sandbox_id)]
    assert len(qemus) == 3 and len(first.workspaces()) == 3
    first.process.kill()
    first.process.wait(30)
    first.channel.close()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in qemus):
        assert time.monotonic() < deadline, "QEMU outlived the killed daemon"
        time.sleep(0.2)

    second = start_daemon(storage, base, log)
    try:
        assert second.listed() == []
        assert second.workspaces() == []
        assert _mounts_under(base) == []
        assert "reclaimed" in log.read_text()
        token = second.create("killd", build)
        assert second.envd("killd", token).run("echo back").stdout == b"back\n"
    finally:
        assert stop_daemon(second) == 0
    assert second.workspaces() == []


def test_twenty_sandboxes_of_one_build_each_see_only_their_own_files(
    daemon: Daemon, store: tuple[Path, str]
) -> None:
    _, build = store
    ids = [f"many{n:02d}" for n in range(20)]

    def start(sandbox_id: str) -> str:
        while True:
            try:
                return daemon.create(sandbox_id, build)
            except grpc.RpcError as exc:  # the node starts 3 at a time, as the original's
                if exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                time.sleep(0.2)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        tokens = dict(zip(ids, pool.map(start, ids), strict=True))
    assert daemon.listed() == ids

    def write_and_look(sandbox_id: str) -> tuple[str, str]:
        client = daemon.envd(sandbox_id, tokens[sandbox_id])
        client.write_file(f"/root/{sandbox_id}", sandbox_id.encode())
        return sandbox_id, client.run("ls /root | grep many || true").stdout.decode().split()[0]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for sandbox_id, seen in pool.map(write_and_look, ids):
            assert seen == sandbox_id
    for sandbox_id in ids:
        listing = daemon.envd(sandbox_id, tokens[sandbox_id]).run("ls /root").stdout.decode().split()
        assert [name for name in listing if name.startswith("many")] == [sandbox_id]
    for sandbox_id in ids:
        daemon.stub.Delete(pb.SandboxDeleteRequest(sandbox_id=sandbox_id))
    assert daemon.listed() == []

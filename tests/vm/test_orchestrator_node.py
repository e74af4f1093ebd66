"""The node daemon as E2B's control plane relies on it beyond the sandbox lifecycle: what Create
answers for placement, the times List reports, node limits and load, metrics, a cold boot from
the rootfs, the network slots a sandbox gives back and a clean stop on SIGTERM.

Everything a test inspects is its own: its daemon's sandbox ids, workspaces and QEMUs, and the
slot owner files of processes descending from its daemon (other ember processes may hold slots
on this host at the same time).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from orchestrator_daemon import (
    START_TIMEOUT_S,
    Daemon,
    create_request,
    make_build,
    qemu_pids,
    running_daemon,
    start_daemon,
)
from prometheus_client.parser import text_string_to_metric_families

from ember.network.ownership import OWNERS_DIR
from ember.orchestrator.daemon import DaemonConfig
from ember.owner import ProcessOwner
from ember.rpc import info_pb2, info_pb2_grpc
from ember.rpc import orchestrator_pb2 as pb

pytestmark = [
    pytest.mark.vm,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes need root for network namespaces and mounts"),
]

WARM_SLOTS = DaemonConfig.warm_slots
BOOT_TIMEOUT_S = 600.0
"""A cold boot under TCG runs the guest kernel and its init before envd answers."""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return make_build(tmp_path_factory.mktemp("orchestrator-node"))


def _stamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    return failed.value.code(), failed.value.details() or ""


def _create(daemon: Daemon, request: pb.SandboxCreateRequest, timeout: float = START_TIMEOUT_S) -> None:
    daemon.stub.Create(request, timeout=timeout)


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        pid = _parent(pid)
    return False


def _owner_pid(entry: Path) -> int | None:
    try:
        owner = ProcessOwner.parse(entry.read_text())
    except FileNotFoundError:
        return None
    return owner.pid if owner is not None else None


def _owned_slots(daemon: Daemon) -> dict[int, int]:
    """This daemon's slots (index to owning pid): owner files naming one of its descendants."""
    owned = {}
    for entry in OWNERS_DIR.iterdir() if OWNERS_DIR.is_dir() else []:
        if not entry.name.isdigit():
            continue
        pid = _owner_pid(entry)
        if pid is not None and _descends_from(pid, daemon.process.pid):
            owned[int(entry.name)] = pid
    return owned


def _wait_for_slots(daemon: Daemon, count: int) -> dict[int, int]:
    """The keeper tops its warm slots up between requests, so the count settles a moment later."""
    deadline = time.monotonic() + 60
    while len(owned := _owned_slots(daemon)) != count:
        assert time.monotonic() < deadline, f"the daemon holds slots {sorted(owned)}, expected {count}"
        time.sleep(0.2)
    return owned


def _metrics(daemon: Daemon) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.proxy_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"/metrics has no {name}{labels or ''}: {sorted({n for n, _ in samples})}"
    return samples[key]


@pytest.fixture
def small_node(store: tuple[Path, str], tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(store[0], tmp_path, "-max-sandboxes", "2") as started:
        yield started


def test_create_list_update_limits_and_node_info_as_the_control_plane_sees_them(
    small_node: Daemon, store: tuple[Path, str]
) -> None:
    storage, build = store
    daemon = small_node
    info = info_pb2_grpc.InfoServiceStub(daemon.channel)
    idle = info.ServiceInfo(empty_pb2.Empty(), timeout=30)
    assert idle.node_id and idle.service_status == info_pb2.Healthy
    assert info_pb2.Orchestrator in idle.service_roles
    assert idle.metric_sandboxes_running == 0
    assert idle.metric_cpu_count == os.cpu_count()
    assert 0 < idle.metric_memory_used_bytes < idle.metric_memory_total_bytes
    assert idle.metric_disks and all(0 < disk.used_bytes <= disk.total_bytes for disk in idle.metric_disks)
    warm = _wait_for_slots(daemon, WARM_SLOTS)

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    times = {
        "nodea": (now - dt.timedelta(seconds=5), now + dt.timedelta(minutes=5)),
        "nodeb": (now - dt.timedelta(seconds=3), now + dt.timedelta(minutes=15)),
    }
    replies = {}
    for sandbox_id, (start, end) in times.items():
        request = create_request(sandbox_id, build)
        request.start_time.CopyFrom(_stamp(start))
        request.end_time.CopyFrom(_stamp(end))
        replies[sandbox_id] = daemon.stub.Create(request, timeout=START_TIMEOUT_S)

    # Placement reads which builds a sandbox's memory and disk come from, and how much of each.
    reply = replies["nodea"]
    assert reply.client_id and not reply.filesystem_boot_applied
    scheduling = reply.scheduling_metadata
    assert scheduling.build_id == build and scheduling.memfile_base_build_id == build
    assert list(scheduling.memfile_build_ids) == [build]
    # The rootfs is the build's diff over the template image, stored once as a build of its own.
    layer = scheduling.rootfs_base_build_id
    assert layer != build and layer in scheduling.rootfs_build_ids
    assert set(scheduling.rootfs_build_ids) <= {build, layer}
    stored = storage / "templates"
    assert all((stored / ref / "metadata.json").exists() for ref in scheduling.rootfs_build_ids)
    for refs, sizes in (
        (scheduling.memfile_build_ids, scheduling.memfile_build_bytes),
        (scheduling.rootfs_build_ids, scheduling.rootfs_build_bytes),
    ):
        assert len(sizes) == len(refs) and all(size > 0 for size in sizes)
    assert sum(scheduling.memfile_build_bytes) <= 512 << 20
    assert scheduling.memfile_dropped_builds == 0 and scheduling.rootfs_dropped_builds == 0
    assert replies["nodeb"].scheduling_metadata == scheduling

    listed = {entry.sandbox_id: entry for entry in daemon.stub.List(empty_pb2.Empty()).sandboxes}
    assert sorted(listed) == ["nodea", "nodeb"]
    for sandbox_id, (start, end) in times.items():
        entry = listed[sandbox_id]
        assert (entry.start_time, entry.end_time) == (_stamp(start), _stamp(end))
        assert entry.client_id == reply.client_id and entry.ram_mb == 512 and entry.vcpu > 0
        assert entry.config.sandbox_id == sandbox_id and entry.config.build_id == build

    later = now + dt.timedelta(hours=1)
    daemon.stub.Update(pb.SandboxUpdateRequest(sandbox_id="nodea", end_time=_stamp(later)), timeout=30)
    listed = {entry.sandbox_id: entry for entry in daemon.stub.List(empty_pb2.Empty()).sandboxes}
    assert listed["nodea"].end_time == _stamp(later)
    assert listed["nodea"].start_time == _stamp(times["nodea"][0])
    assert listed["nodeb"].end_time == _stamp(times["nodeb"][1])
    code, message = _code(
        lambda: daemon.stub.Update(pb.SandboxUpdateRequest(sandbox_id="nobody", end_time=_stamp(later)))
    )
    assert code == grpc.StatusCode.NOT_FOUND and "nobody" in message

    code, message = _code(lambda: _create(daemon, create_request("nodec", build)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "maximum of 2 sandboxes" in message

    busy = info.ServiceInfo(empty_pb2.Empty(), timeout=30)
    assert busy.metric_sandboxes_running == 2
    assert busy.metric_cpu_allocated == sum(entry.vcpu for entry in listed.values())
    assert busy.metric_memory_allocated_bytes == 2 * 512 << 20
    held = _wait_for_slots(daemon, WARM_SLOTS + 2)
    assert set(warm) < set(held), "a create did not take one of the slots made ahead for it"

    daemon.stub.Delete(pb.SandboxDeleteRequest(sandbox_id="nodeb"), timeout=60)
    _wait_for_slots(daemon, WARM_SLOTS + 1)

    # Bigger than the whole node: no wait makes room, the control plane must place it elsewhere.
    code, message = _code(lambda: _create(daemon, create_request("nodec", build, total_disk_size_mb=1 << 40)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "total_disk_size_mb" in message
    boot = create_request("nodec", build, ram_mb=(idle.metric_memory_total_bytes >> 20) + 1024)
    boot.filesystem_boot = True
    code, message = _code(lambda: _create(daemon, boot))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "ram_mb" in message

    _create(daemon, create_request("nodec", build))
    assert daemon.envd("nodec", "token-nodec").run("echo $SANDBOX_NAME").stdout == b"nodec\n"
    paused = str(uuid.uuid4())
    daemon.stub.Pause(pb.SandboxPauseRequest(sandbox_id="nodea", build_id=paused), timeout=300)
    assert daemon.listed() == ["nodec"]

    samples = _metrics(daemon)
    assert _metric(samples, "ember_sandboxes_running") == 1
    assert _metric(samples, "ember_sandbox_starts_total", kind="resume") == 3
    assert _metric(samples, "ember_sandbox_start_seconds_count") == 3
    assert _metric(samples, "ember_sandbox_start_seconds_bucket", le="+Inf") == 3
    assert _metric(samples, "ember_sandbox_start_failures_total") == 3
    assert _metric(samples, "ember_sandbox_pauses_total") == 1
    assert _metric(samples, "ember_sandbox_pause_seconds_count") == 1
    assert _metric(samples, "ember_sandbox_failures_total") == 0
    assert _metric(samples, "ember_grpc_errors_total", method="Create", code="RESOURCE_EXHAUSTED") == 3
    assert _metric(samples, "ember_grpc_errors_total", method="Update", code="NOT_FOUND") == 1
    for counted in (
        "ember_page_faults_served_total",
        "ember_memory_read_bytes_total",
        "ember_chunk_fetches_total",
    ):
        assert _metric(samples, counted) >= 0
    assert sum(value for (name, _), value in samples.items() if name == "ember_proxy_requests_total") > 0

    # The control plane stops placing work on a draining node; the node reports what it was told.
    for status in (info_pb2.Draining, info_pb2.Healthy):
        before = info.ServiceInfo(empty_pb2.Empty(), timeout=30).service_status_changed_at
        info.ServiceStatusOverride(info_pb2.ServiceStatusChangeRequest(service_status=status), timeout=30)
        after = info.ServiceInfo(empty_pb2.Empty(), timeout=30)
        assert after.service_status == status
        assert after.service_status_changed_at.ToDatetime() > before.ToDatetime()
        assert after.metric_sandboxes_running == 1

    daemon.stub.Delete(pb.SandboxDeleteRequest(sandbox_id="nodec"), timeout=60)
    _wait_for_slots(daemon, WARM_SLOTS)
    assert daemon.listed() == []


def test_a_filesystem_boot_runs_commands_through_envd(store: tuple[Path, str], tmp_path: Path) -> None:
    _, build = store
    with running_daemon(store[0], tmp_path) as daemon:
        request = create_request("coldboot", build)
        request.filesystem_boot = True
        reply = daemon.stub.Create(request, timeout=BOOT_TIMEOUT_S)
        assert reply.filesystem_boot_applied
        assert list(reply.scheduling_metadata.memfile_build_ids) == []
        client = daemon.envd("coldboot", "token-coldboot")
        result = client.run('echo "$SANDBOX_NAME" > /root/me; cat /root/me')
        assert result.exit_code == 0 and result.stdout == b"coldboot\n"
        assert daemon.listed() == ["coldboot"]
        daemon.stub.Delete(pb.SandboxDeleteRequest(sandbox_id="coldboot"), timeout=60)
        assert qemu_pids("coldboot") == []


def test_sigterm_refuses_new_work_then_kills_the_sandboxes_and_exits_zero(
    store: tuple[Path, str], tmp_path: Path
) -> None:
    storage, build = store
    daemon = start_daemon(storage, tmp_path / "base", tmp_path / "daemon.log")
    try:
        _create(daemon, create_request("termed", build))
        assert qemu_pids("termed") and daemon.workspaces()
        slots = _wait_for_slots(daemon, WARM_SLOTS + 1)
        health = health_pb2_grpc.HealthStub(daemon.channel)
        daemon.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(service="SandboxService"), timeout=2)
            except grpc.RpcError:
                break
            if answer.status != health_pb2.HealthCheckResponse.SERVING:
                break
            assert time.monotonic() < deadline, "the daemon still reports SERVING after SIGTERM"
            time.sleep(0.05)
        code, _ = _code(lambda: _create(daemon, create_request("late", build), timeout=30))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert daemon.process.wait(120) == 0, daemon.log.read_text()[-3000:]
    finally:
        daemon.channel.close()
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(30)
    assert daemon.workspaces() == []
    assert qemu_pids("termed") == [] and qemu_pids("late") == []
    left = [idx for idx, pid in slots.items() if _owner_pid(OWNERS_DIR / str(idx)) == pid]
    assert left == [], f"the stopped daemon left the owner files of slots {left}"
    assert "stopped" in daemon.log.read_text()

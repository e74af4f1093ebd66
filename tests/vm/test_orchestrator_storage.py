"""The node daemon over its storage: builds in a bucket (GCS emulator, moto S3) resumed through
the chunk cache and paused back into the bucket; a build whose memory cannot be read fails its
own sandbox only; and the daemon's log says, one JSON line per lifecycle step, what happened to
which sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from orchestrator_daemon import Daemon, environment, make_build, running_daemon

from ember.rpc import orchestrator_pb2 as pb

pytestmark = [
    pytest.mark.vm,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes need root for network namespaces and mounts"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("orchestrator-storage")
    return make_build(root, start_cmd="echo started > /root/started", ready_cmd="test -s /root/started")


def _events(daemon: Daemon) -> list[dict[str, Any]]:
    """The daemon's log lines that are sandbox events (every line must be JSON)."""
    lines = [json.loads(line) for line in daemon.log.read_text().splitlines() if line.strip()]
    return [line for line in lines if "event" in line]


def _chunk_fetches(daemon: Daemon) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.proxy_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    values = [
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("ember_chunk_fetches_total")
    ]
    assert values, text
    return values[0]


@pytest.mark.emulator
@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_a_daemon_on_a_bucket_resumes_pauses_into_it_and_resumes_the_pause(
    store: tuple[Path, str],
    tmp_path: Path,
    gcs_emulator: Any,
    s3_server: Any,
    bucket_env: dict[str, str],
    scheme: str,
) -> None:
    storage, build = store
    env = {**bucket_env, "SNAPSHOT_CACHE_DIR": str(tmp_path / "chunks")}
    bucket = f"{scheme}://{gcs_emulator.bucket if scheme == 'gs' else s3_server.bucket}/{uuid.uuid4().hex}"
    copy_env = {**environment(tmp_path / "copy"), **env}
    copied = subprocess.run(
        [sys.executable, "-m", "ember", "copy-build", "-build", build, "-from", str(storage), "-to", bucket],
        capture_output=True, text=True, timeout=600, env=copy_env, check=False,
    )  # fmt: skip
    assert copied.returncode == 0, copied.stderr

    with running_daemon(bucket, tmp_path, env=env) as daemon:
        token = daemon.create("bucketa", build)
        result = daemon.envd("bucketa", token).run("cat /root/started && echo paused > /root/paused")
        assert (result.exit_code, result.stdout.decode()) == (0, "started\n")
        assert _chunk_fetches(daemon) > 0, "the guest's memory came from nowhere but the bucket"
        assert any((tmp_path / "chunks").rglob("*")), "nothing went through the chunk cache"

        paused = str(uuid.uuid4())
        daemon.stub.Pause(pb.SandboxPauseRequest(sandbox_id="bucketa", build_id=paused), timeout=120)
        token = daemon.create("bucketb", paused, snapshot=True)
        resumed = daemon.envd("bucketb", token)
        assert resumed.read_file("/root/paused") == b"paused\n"
        assert resumed.read_file("/root/started") == b"started\n"
        daemon.stub.Delete(pb.SandboxDeleteRequest(sandbox_id="bucketb"))
        assert daemon.listed() == []

    # the pause went to the bucket, not to the node: a local copy of it resumes elsewhere
    back = tmp_path / "back"
    fetched = subprocess.run(
        [sys.executable, "-m", "ember", "copy-build", "-build", paused, "-from", bucket, "-to", str(back)],
        capture_output=True, text=True, timeout=600, env=copy_env, check=False,
    )  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    assert (back / "templates" / paused / "metadata.json").exists()


def test_a_build_whose_memory_is_unreadable_fails_its_sandbox_alone_and_the_log_tells_each_step(
    store: tuple[Path, str], tmp_path: Path
) -> None:
    storage, good = store
    _, doomed_base = make_build(storage.parent, "true", "true")  # a second base build in the same storage
    with running_daemon(storage, tmp_path) as daemon:
        token = daemon.create("healthy", good)
        daemon.create("parentof", doomed_base)
        doomed = str(uuid.uuid4())
        daemon.stub.Pause(pb.SandboxPauseRequest(sandbox_id="parentof", build_id=doomed), timeout=120)
        # the paused build holds its own dirty pages; the rest of its memory is its parent's, now gone
        (storage / "templates" / doomed_base / "memfile").unlink()

        with pytest.raises(grpc.RpcError) as failed:
            daemon.create("broken", doomed, snapshot=True)
        assert failed.value.code() is not grpc.StatusCode.OK
        details = failed.value.details() or ""
        assert "memory" in details and "\n" not in details, details

        assert daemon.listed() == ["healthy"]
        assert daemon.envd("healthy", token).run("cat /root/started").stdout == b"started\n"
        health = health_pb2_grpc.HealthStub(daemon.channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service="SandboxService"), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert [name.rsplit("-", 1)[0] for name in daemon.workspaces()] == ["healthy"]
        daemon.stub.Delete(pb.SandboxDeleteRequest(sandbox_id="healthy"))

    events = _events(daemon)
    by_sandbox: dict[str, list[str]] = {}
    for event in events:
        assert event["sandbox_id"] and event["time"] and event["level"], event
        by_sandbox.setdefault(event["sandbox_id"], []).append(event["event"])
    assert by_sandbox["healthy"][:2] == ["starting", "running"], by_sandbox["healthy"]
    assert "pausing" in by_sandbox["parentof"] or "paused" in by_sandbox["parentof"], by_sandbox["parentof"]
    assert "failed" in by_sandbox["broken"], by_sandbox["broken"]
    assert "running" not in by_sandbox["broken"]
    failed_line = next(
        event for event in events if event["sandbox_id"] == "broken" and event["event"] == "failed"
    )
    assert failed_line["level"] == "warning" and "memory" in failed_line["message"]

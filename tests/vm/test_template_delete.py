"""TemplateBuildDelete of a build still running on the node daemon: the node forgets it, its VM
goes, its workspace goes, and the template's build never becomes a complete build."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from orchestrator_daemon import Daemon, make_build, running_daemon

from ember.rpc import template_manager_pb2 as tpb
from ember.rpc import template_manager_pb2_grpc

pytestmark = [pytest.mark.vm, pytest.mark.root]

START_TIMEOUT_S = 900.0
GONE_TIMEOUT_S = 300.0
"""Generous: it covers a VM booting or pausing under TCG on a shared two-core host, and a node
that only stops a build between steps (the slow step then runs to its end)."""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return make_build(tmp_path_factory.mktemp("template-delete"))


@pytest.fixture
def daemon(store: tuple[Path, str], tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(store[0], tmp_path) as started:
        yield started


def _step(kind: str, *args: str) -> tpb.TemplateStep:
    return tpb.TemplateStep(type=kind, args=list(args))


def _complete_builds(storage: Path) -> set[str]:
    return {path.parent.name for path in (storage / "templates").glob("*/metadata.json")}


def _vm_pids(sandbox_ids: list[str]) -> list[int]:
    """Processes whose command line names one of the sandboxes (``-name``/``--id sandbox-<id>``)."""
    names = [f"sandbox-{sandbox_id}".encode() for sandbox_id in sandbox_ids]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if any(name in cmdline for name in names):
            found.append(int(entry.name))
    return found


def test_deleting_a_running_build_forgets_it_stops_its_vm_and_leaves_no_build(
    daemon: Daemon, store: tuple[Path, str]
) -> None:
    storage, base = store
    service = template_manager_pb2_grpc.TemplateServiceStub(daemon.channel)
    build = str(uuid.uuid4())
    complete_before = _complete_builds(storage)
    config = tpb.TemplateConfig(
        templateID="doomed", buildID=build, memoryMB=512, vCpuCount=2,
        fromTemplate=tpb.FromTemplateConfig(buildID=base),
        steps=[_step("RUN", "echo slow-step-started; sleep 30"), _step("RUN", "echo second > /root/second")],
        startCommand="sleep 3600 &",
    )  # fmt: skip
    service.TemplateCreate(tpb.TemplateCreateRequest(template=config), timeout=30)
    status_request = tpb.TemplateStatusRequest(templateID="doomed", buildID=build)

    # the slow step runs in a VM of the build when the delete comes
    logs: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    while not any("slow-step-started" in line for line in logs):
        status = service.TemplateBuildStatus(status_request, timeout=30)
        logs = [entry.message for entry in status.logEntries]
        assert status.status == tpb.Building, "\n".join(logs)
        assert time.monotonic() < deadline, "\n".join(logs[-20:])
        time.sleep(0.3)
    sandbox_ids = [name.rsplit("-", 1)[0] for name in daemon.workspaces()]
    assert len(sandbox_ids) == 1, sandbox_ids
    vms = _vm_pids(sandbox_ids)
    assert vms, f"no VM process names sandbox-{sandbox_ids[0]}"

    service.TemplateBuildDelete(
        tpb.TemplateBuildDeleteRequest(buildID=build, templateID="doomed"), timeout=30
    )

    with pytest.raises(grpc.RpcError) as status_after:
        service.TemplateBuildStatus(status_request, timeout=30)
    assert status_after.value.code() is grpc.StatusCode.NOT_FOUND
    assert build in (status_after.value.details() or "")
    with pytest.raises(grpc.RpcError) as delete_again:
        service.TemplateBuildDelete(tpb.TemplateBuildDeleteRequest(buildID=build, templateID="doomed"))
    assert delete_again.value.code() is grpc.StatusCode.NOT_FOUND

    # the build stops: its VM and workspace go, and its claim on the build id is given up
    target = storage / "templates" / build
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while [pid for pid in vms if Path(f"/proc/{pid}").exists()] or daemon.workspaces() or target.exists():
        assert time.monotonic() < deadline, (
            f"after the delete: VM processes {_vm_pids(sandbox_ids)}, workspaces {daemon.workspaces()}, "
            f"{target} holds {sorted(p.name for p in target.iterdir()) if target.exists() else []}"
        )
        time.sleep(0.5)
    assert daemon.listed() == []
    assert not (target / "metadata.json").exists()
    # at most the layer of the step that was running was stored; no later step ran, nothing finalized
    new_builds = _complete_builds(storage) - complete_before
    assert build not in new_builds
    assert len(new_builds) <= 1, new_builds

"""Template builds on the node daemon, through E2B's TemplateService over gRPC: from a template with
steps and a layer cache, COPY files uploaded to the node, a failing step, and from an OCI image
pushed to a registry the test runs (Debian's docker-registry), made with umoci and skopeo."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from orchestrator_daemon import Daemon, free_port, make_build, running_daemon

from ember.guest import default_template_rootfs
from ember.rpc import orchestrator_pb2 as pb
from ember.rpc import template_manager_pb2 as tpb
from ember.rpc import template_manager_pb2_grpc

pytestmark = [pytest.mark.vm, pytest.mark.root]

BUILD_TIMEOUT_S = 900.0


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return make_build(tmp_path_factory.mktemp("templates"))


@pytest.fixture
def daemon(store: tuple[Path, str], tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(store[0], tmp_path) as started:
        yield started


def _templates(daemon: Daemon) -> template_manager_pb2_grpc.TemplateServiceStub:
    return template_manager_pb2_grpc.TemplateServiceStub(daemon.channel)


def _build(daemon: Daemon, config: tpb.TemplateConfig) -> tuple[tpb.TemplateBuildStatusResponse, list[str]]:
    """Start a build and poll it as the control plane does (logs from an offset) until it ends."""
    service = _templates(daemon)
    service.TemplateCreate(tpb.TemplateCreateRequest(template=config), timeout=30)
    logs: list[str] = []
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    while True:
        status = service.TemplateBuildStatus(
            tpb.TemplateStatusRequest(templateID=config.templateID, buildID=config.buildID, offset=len(logs)),
            timeout=30,
        )
        logs += [f"{entry.fields.get('step', '')}|{entry.message}" for entry in status.logEntries]
        if status.status != tpb.Building and not status.logEntries:
            return status, logs
        assert time.monotonic() < deadline, "\n".join(logs[-20:])
        time.sleep(0.3)


def _upload(daemon: Daemon, files: dict[str, bytes]) -> str:
    """Tar ``files`` as the SDK does for a COPY step and put it where InitLayerFileUpload says."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    files_hash = hashlib.sha256(archive.getvalue()).hexdigest()
    answer = _templates(daemon).InitLayerFileUpload(
        tpb.InitLayerFileUploadRequest(templateID="t", hash=files_hash)
    )
    assert not answer.present
    request = urllib.request.Request(answer.url, data=archive.getvalue(), method="PUT")
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.status == 200
    again = _templates(daemon).InitLayerFileUpload(
        tpb.InitLayerFileUploadRequest(templateID="t", hash=files_hash)
    )
    assert again.present
    return files_hash


def _step(kind: str, *args: str, files_hash: str = "", force: bool = False) -> tpb.TemplateStep:
    return tpb.TemplateStep(type=kind, args=list(args), filesHash=files_hash or None, force=force)


def _run_in(daemon: Daemon, build: str, sandbox_id: str, command: str) -> str:
    token = daemon.create(sandbox_id, build)
    try:
        result = daemon.envd(sandbox_id, token).run(command)
        assert result.exit_code == 0, result.stderr
        return result.stdout.decode()
    finally:
        daemon.stub.Delete(pb.SandboxDeleteRequest(sandbox_id=sandbox_id))


def test_steps_build_layers_that_the_cache_reuses_and_force_rebuilds(
    daemon: Daemon, store: tuple[Path, str]
) -> None:
    storage, base = store
    payload = bytes(range(256)) * 4096
    files_hash = _upload(daemon, {"data/blob.bin": payload, "data/note.txt": b"copied\n"})
    steps = [
        _step("ENV", "GREETING", "hello"),
        _step("WORKDIR", "/srv/app"),
        _step("RUN", "echo $GREETING > greeting.txt"),
        _step("COPY", "data", "/srv/files/", "", "", files_hash=files_hash),
        _step("RUN", "sha256sum /srv/files/blob.bin > /srv/app/sum.txt"),
    ]

    def config(build: str, *, force_last: bool = False) -> tpb.TemplateConfig:
        chosen = list(steps)
        if force_last:
            chosen[-1] = _step("RUN", "sha256sum /srv/files/blob.bin > /srv/app/sum.txt", force=True)
        return tpb.TemplateConfig(
            templateID="steps", buildID=build, memoryMB=512, vCpuCount=2, steps=chosen,
            fromTemplate=tpb.FromTemplateConfig(buildID=base), startCommand="sleep 3600 &",
            readyCommand="pgrep -f 'sleep 3600'",
        )  # fmt: skip

    first = str(uuid.uuid4())
    status, logs = _build(daemon, config(first))
    assert status.status == tpb.Completed, "\n".join(logs)
    assert status.metadata.schedulingMetadata.build_id == first
    assert not [line for line in logs if "CACHED" in line]
    assert (storage / "templates" / first / "metadata.json").exists()
    out = _run_in(
        daemon, first, "tpla",
        "cat greeting.txt; pwd; sha256sum /srv/files/blob.bin; cat /srv/files/note.txt; "
        "pgrep -f 'sleep 3600' >/dev/null && echo started",
    )  # fmt: skip
    expected_sum = hashlib.sha256(payload).hexdigest()
    assert out.splitlines() == [
        "hello", "/srv/app", f"{expected_sum}  /srv/files/blob.bin", "copied", "started",
    ]  # fmt: skip

    second = str(uuid.uuid4())
    status, logs = _build(daemon, config(second))
    assert status.status == tpb.Completed, "\n".join(logs)
    cached = [line for line in logs if "CACHED" in line]
    assert [line.split("|")[0] for line in cached] == ["3", "4", "5"], "\n".join(logs)

    third = str(uuid.uuid4())
    status, logs = _build(daemon, config(third, force_last=True))
    assert status.status == tpb.Completed, "\n".join(logs)
    assert [line.split("|")[0] for line in logs if "CACHED" in line] == ["3", "4"], "\n".join(logs)
    assert _run_in(daemon, third, "tplb", "cat sum.txt").split()[0] == expected_sum


def test_a_failing_step_names_the_step_and_leaves_no_template(
    daemon: Daemon, store: tuple[Path, str]
) -> None:
    storage, base = store
    build = str(uuid.uuid4())
    config = tpb.TemplateConfig(
        templateID="broken", buildID=build, memoryMB=512, vCpuCount=2,
        fromTemplate=tpb.FromTemplateConfig(buildID=base),
        steps=[_step("RUN", "echo fine"), _step("RUN", "echo about to fail >&2; exit 7")],
    )  # fmt: skip
    status, logs = _build(daemon, config)
    assert status.status == tpb.Failed
    assert status.reason.step == "2"
    assert "exited with code 7" in status.reason.message
    assert any("about to fail" in line for line in logs)
    assert not (storage / "templates" / build).exists()
    assert daemon.listed() == []


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry on a free loopback port, storing into the test's directory."""
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed (scripts/setup.sh installs it)")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: " + str(tmp_path / "registry")
        + f"\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )  # fmt: skip
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "the registry did not start"
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def _push_image(rootfs: Path, registry: str, work: Path) -> str:
    """An OCI image of ``rootfs`` (one layer, made with umoci), pushed with skopeo; its reference."""
    layout = work / "layout"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:latest"], check=True)
    bundle = work / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)], check=True)
    subprocess.run(["cp", "-a", f"{rootfs}/.", str(bundle / "rootfs")], check=True)
    (bundle / "rootfs" / "etc" / "image-marker").write_text("from the registry\n")
    subprocess.run(["umoci", "repack", "--image", f"{layout}:latest", str(bundle)], check=True)
    reference = f"{registry}/ember-small:1"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{layout}:latest",
            f"docker://{reference}",
        ],
        check=True,
    )
    return reference


def test_an_image_from_a_registry_builds_and_runs(daemon: Daemon, registry: str, tmp_path: Path) -> None:
    reference = _push_image(default_template_rootfs(), registry, tmp_path / "image")
    build = str(uuid.uuid4())
    config = tpb.TemplateConfig(
        templateID="from-image", buildID=build, memoryMB=512, vCpuCount=2, diskSizeMB=1024,
        fromImage=reference, steps=[_step("RUN", "cat /etc/image-marker > /root/seen")],
    )  # fmt: skip
    status, logs = _build(daemon, config)
    assert status.status == tpb.Completed, "\n".join(logs)
    assert _run_in(daemon, build, "imga", "cat /root/seen") == "from the registry\n"

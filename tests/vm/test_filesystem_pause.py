"""A filesystem-only pause on the node daemon, end to end: the build it stores holds the disk
alone, only a cold boot starts it, and it copies like any other build.

One create-build (module fixture) gives the parent; the pause, the cold boot, the refused
memory resume and the copy all run against one daemon, as a control plane would drive them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from orchestrator_daemon import create_request, make_build, qemu_pids, running_daemon

from ember.rpc import orchestrator_pb2 as pb

pytestmark = [
    pytest.mark.vm,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes need root for network namespaces and mounts"),
]

BOOT_TIMEOUT_S = 600.0
"""A cold boot under TCG runs the guest kernel and its init before envd answers."""


def test_a_filesystem_only_pause_stores_the_disk_alone_and_cold_boots_with_its_files(tmp_path: Path) -> None:
    storage, build = make_build(tmp_path / "parent")
    # as a template build with ENV and WORKDIR steps records it: what its commands ran with
    parent_metadata = storage / "templates" / build / "metadata.json"
    document = json.loads(parent_metadata.read_text())
    document["context"] = {"workdir": "/tmp", "env_vars": {"FROM_TEMPLATE": "yes"}}
    parent_metadata.write_text(json.dumps(document))
    with running_daemon(storage, tmp_path) as daemon:
        token = daemon.create("fsonly", build)
        daemon.envd("fsonly", token).write_file("/root/keep.txt", b"written before the pause\n")

        paused = str(uuid.uuid4())
        reply = daemon.stub.Pause(
            pb.SandboxPauseRequest(sandbox_id="fsonly", build_id=paused, filesystem_only=True), timeout=300
        )
        scheduling = reply.scheduling_metadata
        assert scheduling.build_id == paused and paused in scheduling.rootfs_build_ids
        assert list(scheduling.memfile_build_ids) == [] and scheduling.memfile_base_build_id == ""
        folder = storage / "templates" / paused
        assert sorted(entry.name for entry in folder.iterdir()) == [
            "metadata.json",
            "rootfs.ext4",
            "rootfs.ext4.header",
        ]
        document = json.loads((folder / "metadata.json").read_text())
        assert document["filesystem_only"] is True and document["version"] >= 2
        assert document["template"]["build_id"] == paused
        assert document["context"] == {"workdir": "/tmp", "env_vars": {"FROM_TEMPLATE": "yes"}}
        assert daemon.listed() == []
        assert qemu_pids("fsonly") == []

        refused = create_request("fsmemory", paused, snapshot=True)
        with pytest.raises(grpc.RpcError) as caught:
            daemon.stub.Create(refused, timeout=120)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "filesystem-only" in (caught.value.details() or "")
        assert daemon.listed() == []

        booted = create_request("fsboot", paused, vcpu=2, ram_mb=512)
        booted.filesystem_boot = True
        assert daemon.stub.Create(booted, timeout=BOOT_TIMEOUT_S).filesystem_boot_applied
        client = daemon.envd("fsboot", "token-fsboot")
        assert client.read_file("/root/keep.txt") == b"written before the pause\n"
        assert client.run("echo $SANDBOX_NAME").stdout == b"fsboot\n"
        # the cold boot starts with the template's defaults, as a resume of it would
        assert client.run("echo $FROM_TEMPLATE; pwd").stdout == b"yes\n/tmp\n"
        daemon.stub.Delete(pb.SandboxDeleteRequest(sandbox_id="fsboot"), timeout=60)
        assert daemon.listed() == [] and qemu_pids("fsboot") == []

    destination = tmp_path / "copy"
    copied = subprocess.run(
        [sys.executable, "-m", "ember", "copy-build", "-build", paused, "-from", str(storage),
         "-to", str(destination)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    assert f"Build '{paused}' copied to '{destination}'" in copied.stderr
    names = {path.name for path in (destination / "templates").rglob("*") if path.is_file()}
    assert {"metadata.json", "rootfs.ext4.header"} <= names
    assert not names & {"memfile", "memfile.header", "snapfile"}
    assert (destination / "templates" / paused / "metadata.json").read_bytes() == (
        folder / "metadata.json"
    ).read_bytes()

"""create-build as a user runs it: the real command, a real QEMU guest, a real network slot.

Each test boots the default Debian template under TCG (~10 s of a core), so they are few.
Kernels live in the shared cache (HOST_KERNELS_DIR) so a fresh -storage does not unpack
the kernel again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sandbox_traces import Finished, Run, run_ember

pytestmark = [
    pytest.mark.vm,
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="create-build needs root for network namespaces and devices"
    ),
]

SMALL = ["-hugepages=false", "-memory", "512", "-disk", "512"]


def _create(storage: Path, build: uuid.UUID, *args: str) -> Finished:
    return run_ember("create-build", "-to-build", str(build), "-storage", str(storage), *args)


def _assert_nothing_left(storage: Path, result: Finished) -> None:
    """The run's own sandbox is gone: its QEMU, slot, workspace, sockets (other sandboxes are not ours)."""
    Run.from_output(result.stdout, result.pid, storage / "orchestrator").assert_gone(within_s=2)


def _objects(storage: Path, build: uuid.UUID) -> list[str]:
    """The build's objects; a failed create leaves none (no data, no metadata.json, no claim marker)."""
    folder = storage / "templates" / str(build)
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_create_build_writes_a_complete_consistent_build(tmp_path: Path) -> None:
    build = uuid.uuid4()
    result = _create(
        tmp_path / "store",
        build,
        *SMALL,
        "-start-cmd",
        "echo started > /root/started; sleep infinity",
        "-ready-cmd",
        "test -e /root/started",
    )
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "Building with page size: 4KB (standard)" in out
    assert f"✅ Build finished: {build}" in out
    assert "📦 Artifacts:" in out and "block size: 4 KB" in out
    objects = tmp_path / "store" / "templates" / str(build)
    # The claim marker (.ember-claim) went once the build was complete.
    assert _objects(tmp_path / "store", build) == [
        "memfile", "memfile.header", "metadata.json", "rootfs.ext4", "rootfs.ext4.header", "snapfile",
    ]  # fmt: skip
    metadata = json.loads((objects / "metadata.json").read_text())
    assert metadata["start"]["start_command"].startswith("echo started")
    assert metadata["template"]["firecracker_version"].startswith("qemu-")

    for artifact in ("-memfile", "-rootfs"):
        inspect = subprocess.run(
            [sys.executable, "-m", "ember", "inspect-build", "-build", str(build), "-storage",
             str(tmp_path / "store"), artifact, "-json"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        report = json.loads(inspect.stdout)
        assert report["validation_error"] is None
        assert report["image"]["diff_size"] > 0
    _assert_nothing_left(tmp_path / "store", result)


def test_a_failing_start_command_leaves_no_build_and_nothing_running(tmp_path: Path) -> None:
    build = uuid.uuid4()
    result = _create(tmp_path / "store", build, *SMALL, "-start-cmd", "exit 3", "-ready-cmd", "false",
                     "-timeout", "1")  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("ember create-build: start command 'exit 3' exited with code 3")
    )
    assert _objects(tmp_path / "store", build) == []
    _assert_nothing_left(tmp_path / "store", result)


def test_a_ready_command_that_never_succeeds_times_out_cleanly(tmp_path: Path) -> None:
    build = uuid.uuid4()
    result = _create(tmp_path / "store", build, *SMALL, "-ready-cmd", "false", "-timeout", "0.1")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ember create-build: ready command 'false' did not succeed within 0.1 min"), last
    assert _objects(tmp_path / "store", build) == []
    _assert_nothing_left(tmp_path / "store", result)

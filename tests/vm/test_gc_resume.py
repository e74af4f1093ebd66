"""``ember gc`` on real builds made by real pauses: what it keeps still resumes in a VM.

The storage holds a base build and, paused on top of it with ``resume-build -cmd-pause``, two
templates, three paused snapshots (two of the first template, one of the second) and a deleted
template with a snapshot of its own. The roots are the templates and the snapshots, as the
control plane's database would name them; the deleted template and its snapshot are named by
nothing. The test walks the headers itself to know what must stay, runs gc for real, then
resumes every root and reads the file each layer wrote: a kept build whose ancestor went would
fail to resume, and a deleted one would still be listed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from orchestrator_daemon import environment, make_build

from ember.header import deserialize_header

pytestmark = [
    pytest.mark.vm,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes need root for network namespaces and mounts"),
]

DEVICES = ("memfile.header", "rootfs.ext4.header")


def _ember(base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ember", *args],
        capture_output=True, text=True, timeout=900, env=environment(base), check=False,
    )  # fmt: skip


def _layer(storage: Path, base: Path, parent: str, name: str) -> str:
    """A build paused on top of ``parent`` whose guest wrote ``/root/<name>``."""
    child = str(uuid.uuid4())
    paused = _ember(
        base, "resume-build", "-from-build", parent, "-to-build", child, "-storage", str(storage),
        "-cmd-pause", f"echo {name} > /root/{name}",
    )  # fmt: skip
    assert paused.returncode == 0, paused.stderr + paused.stdout
    return child


def _reachable(storage: Path, roots: set[str]) -> set[str]:
    """Every build a root's headers read from, found by reading the headers here, not through gc."""
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        build = pending.pop()
        if build in seen:
            continue
        seen.add(build)
        for device in DEVICES:
            path = storage / "templates" / build / device
            if not path.exists():  # an image layer has a rootfs and no memory
                continue
            header = deserialize_header(path.read_bytes())
            pending.extend(str(referenced) for referenced in header.referenced_builds())
    return seen


def _stored(storage: Path) -> set[str]:
    return {entry.name for entry in (storage / "templates").iterdir() if entry.is_dir()}


def test_gc_deletes_exactly_the_unreferenced_builds_and_every_root_still_resumes(tmp_path: Path) -> None:
    storage, base_build = make_build(tmp_path)
    base = tmp_path / "base"
    first = _layer(storage, base, base_build, "first")
    second = _layer(storage, base, base_build, "second")
    snapshot_a = _layer(storage, base, first, "snapshot_a")
    snapshot_b = _layer(storage, base, snapshot_a, "snapshot_b")
    snapshot_c = _layer(storage, base, second, "snapshot_c")
    deleted = _layer(storage, base, base_build, "deleted")
    deleted_snapshot = _layer(storage, base, deleted, "deleted_snapshot")

    roots = {first, second, snapshot_a, snapshot_b, snapshot_c}
    keep = _reachable(storage, roots)
    assert roots | {base_build} <= keep  # and the image layer the base build boots from
    assert not {deleted, deleted_snapshot} & keep
    assert _stored(storage) == keep | {deleted, deleted_snapshot}

    roots_file = tmp_path / "roots"
    roots_file.write_text("# the templates and paused snapshots in use\n" + "\n".join(sorted(roots)) + "\n")
    plan = _ember(base, "gc", "-storage", str(storage), "-roots-file", str(roots_file), "-grace", "0s")
    assert plan.returncode == 0, plan.stderr + plan.stdout
    assert deleted in plan.stdout and deleted_snapshot in plan.stdout
    assert _stored(storage) == keep | {deleted, deleted_snapshot}, "a dry run deleted something"

    applied = _ember(
        base, "gc", "-storage", str(storage), "-roots-file", str(roots_file), "-grace", "0s", "-dry-run=false"
    )
    assert applied.returncode == 0, applied.stderr + applied.stdout
    assert _stored(storage) == keep

    expected = {
        first: ["first"],
        second: ["second"],
        snapshot_a: ["first", "snapshot_a"],
        snapshot_b: ["first", "snapshot_a", "snapshot_b"],
        snapshot_c: ["second", "snapshot_c"],
    }
    for build, files in expected.items():
        resumed = _ember(
            base, "resume-build", "-from-build", build, "-storage", str(storage),
            "-cmd", " && ".join(f"cat /root/{name}" for name in files),
        )  # fmt: skip
        assert resumed.returncode == 0, f"{build}: {resumed.stderr}{resumed.stdout}"
        assert "\n".join(files) + "\n" in resumed.stdout, resumed.stdout

"""Memory prefetch under QEMU/TCG: ``-optimize`` records it, a resume replays it; failing storage.

One create-build and one ``resume-build -pause -optimize`` (module fixture, ~20 s) make a
build with prefetch data. The replay test drives the sandbox process's half of a sandbox
(``SandboxRuntime``, what ``Sandbox.resume`` runs in its sandbox process) in this process,
so it can read the memory file's own counters; the failing-storage test goes through
``Node`` and ``Sandbox`` as every command does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_traces import descendants, wait_slots_released

from ember.environment import Environment
from ember.errors import BuildError
from ember.guest import cache_dir
from ember.network import SlotPool
from ember.sandbox import Node, ResumeOptions, Sandbox, load_build_info, new_sandbox_id
from ember.sandbox.cleanup import create_workspace, remove_workspace
from ember.sandbox.records import GuestIdentity, ResumeSpec
from ember.sandbox.runtime import SandboxRuntime
from ember.storage import MEMFILE, LocalStorage

pytestmark = [
    pytest.mark.vm,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes need root for network namespaces and mounts"),
]


def _ember(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOST_KERNELS_DIR": str(cache_dir() / "kernels")}
    return subprocess.run(
        [sys.executable, "-m", "ember", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def optimized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, uuid.UUID, uuid.UUID, str]:
    """(storage dir, the created build, the optimized build paused from it, what -optimize printed)."""
    storage = tmp_path_factory.mktemp("prefetch") / "store"
    base, paused = uuid.uuid4(), uuid.uuid4()
    created = _ember(
        "create-build", "-to-build", str(base), "-storage", str(storage), "-hugepages=false",
        "-memory", "512", "-disk", "512",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr + created.stdout
    result = _ember(
        "resume-build", "-from-build", str(base), "-to-build", str(paused), "-storage", str(storage),
        "-pause", "-optimize",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    return storage, base, paused, result.stdout


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HOST_KERNELS_DIR", str(cache_dir() / "kernels"))
    yield


def test_optimize_saves_the_pages_both_recording_runs_read(
    optimized: tuple[Path, uuid.UUID, uuid.UUID, str],
) -> None:
    storage, _, build, printed = optimized
    found = re.search(r"^✅ Prefetch mapping saved: (\d+) blocks$", printed, re.M)
    assert found, printed
    metadata = json.loads((storage / "templates" / str(build) / "metadata.json").read_text())
    memory = metadata["prefetch"]["memory"]
    assert len(memory["indices"]) == int(found.group(1)) > 0
    assert len(memory["access_types"]) == len(memory["indices"])
    assert set(memory["access_types"]) <= {"r", "w"}
    assert memory["block_size"] == 4096


def test_a_resume_with_prefetch_serves_every_prefetched_page_from_the_page_cache(
    optimized: tuple[Path, uuid.UUID, uuid.UUID, str], tmp_path: Path, environment: None
) -> None:
    storage_dir, _, build_id, _ = optimized
    env = Environment.resolve(str(storage_dir))
    storage = LocalStorage(storage_dir / "templates")
    build = load_build_info(storage, build_id, env)
    assert build.metadata.prefetch is not None
    sandbox_id = new_sandbox_id()
    workspace = create_workspace(env, sandbox_id)
    runtime = SandboxRuntime(storage, env, lambda event: None)
    try:
        with SlotPool() as pool:
            slot = pool.acquire()
            try:
                spec = ResumeSpec(sandbox_id, build, workspace, GuestIdentity("prefetch-token"))
                runtime.resume(spec, slot)
                guest = runtime.guest
                assert guest is not None and guest.envd is not None
                assert guest.prefetcher is not None and guest.lazy is not None
                assert guest.prefetcher.wait(60)
                assert guest.envd.run("echo alive").stdout == b"alive\n"
                stats = guest.lazy.stats()
                prefetched = guest.prefetcher.stats()
            finally:
                runtime.kill()
                pool.release(slot)
    finally:
        remove_workspace(workspace)
    assert prefetched.failure is None
    assert stats.pages_prefetched > len(build.metadata.prefetch.indices) // 2
    assert stats.pages_reread == 0, "the guest faulted on pages the prefetcher had loaded"


def test_a_resume_whose_memory_reads_fail_ends_with_the_storage_error(
    optimized: tuple[Path, uuid.UUID, uuid.UUID, str], tmp_path: Path, environment: None
) -> None:
    """The paused build reads its own dirty pages fine and the rest from its parent, which is broken."""
    storage_dir, base, build_id, _ = optimized
    broken = tmp_path / "store"
    for build in (base, build_id):
        shutil.copytree(storage_dir / "templates" / str(build), broken / "templates" / str(build))
    (broken / "templates" / str(base) / MEMFILE).unlink()  # the parent's memory data is gone
    env = Environment.resolve(str(broken), {**os.environ, "ORCHESTRATOR_BASE_PATH": str(tmp_path / "o")})
    with Node(str(broken), env=env, warm_slots=0) as node:  # every slot its keeper holds is a sandbox's
        with pytest.raises(BuildError, match="guest memory could not be read from storage") as failed:
            Sandbox.resume(node, ResumeOptions(build_id, prefetch=False))
        assert str(base) in str(failed.value) or MEMFILE in str(failed.value)
        assert "\n" not in str(failed.value)
        assert node.sandboxes() == []
        wait_slots_released(proc.pid for proc in descendants(os.getpid()))
    assert list((tmp_path / "o" / "sandbox").iterdir()) == []
    assert not [
        line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(tmp_path) in line
    ]

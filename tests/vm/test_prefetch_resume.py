"""Memory prefetch under QEMU/TCG: ``-optimize`` records it, a resume replays it; failing storage.

One create-build and one ``resume-build -pause -optimize`` (module fixture, ~20 s) make a
build with prefetch data; the other tests resume it in this process, so they can look at
the memory file's counters.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.environment import Environment
from ember.errors import BuildError, StorageUnreachable
from ember.guest import cache_dir
from ember.memory import is_mounted
from ember.network import SlotPool
from ember.sandbox.resume import RunningSandbox, load_build
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
def optimized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, uuid.UUID, str]:
    """(storage dir, the optimized build, what -optimize printed)."""
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
    return storage, paused, result.stdout


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HOST_KERNELS_DIR", str(cache_dir() / "kernels"))
    yield


class FailingStorage(LocalStorage):
    """A local store whose memfile data reads fail once ``healthy_reads`` have succeeded."""

    def __init__(self, root: Path, healthy_reads: int) -> None:
        super().__init__(root)
        self.healthy_reads = healthy_reads

    def read_range_into(self, key: str, offset: int, buffer: bytearray | memoryview) -> int:
        if key.endswith(f"/{MEMFILE}"):
            if self.healthy_reads <= 0:
                raise StorageUnreachable(self.url, "injected failure of a memfile read")
            self.healthy_reads -= 1
        return super().read_range_into(key, offset, buffer)


def test_optimize_saves_the_pages_both_recording_runs_read(optimized: tuple[Path, uuid.UUID, str]) -> None:
    storage, build, printed = optimized
    found = re.search(r"^✅ Prefetch mapping saved: (\d+) blocks$", printed, re.M)
    assert found, printed
    metadata = json.loads((storage / "templates" / str(build) / "metadata.json").read_text())
    memory = metadata["prefetch"]["memory"]
    assert len(memory["indices"]) == int(found.group(1)) > 0
    assert len(memory["access_types"]) == len(memory["indices"])
    assert set(memory["access_types"]) <= {"r", "w"}
    assert memory["block_size"] == 4096


def test_a_resume_with_prefetch_serves_every_prefetched_page_from_the_page_cache(
    optimized: tuple[Path, uuid.UUID, str], tmp_path: Path, environment: None
) -> None:
    storage_dir, build_id, _ = optimized
    storage = LocalStorage(storage_dir / "templates")
    build = load_build(storage, build_id, tmp_path)
    assert build.metadata.prefetch is not None
    with (
        SlotPool() as pool,
        RunningSandbox(build, Environment.resolve(str(storage_dir)), tmp_path / "s", pool) as sandbox,
    ):
        assert sandbox.prefetcher is not None
        assert sandbox.prefetcher.wait(60)
        assert sandbox.envd.run("echo alive").stdout == b"alive\n"
        stats = sandbox.memory.stats()
    assert sandbox.prefetcher.stats().failure is None
    assert stats.pages_prefetched > len(build.metadata.prefetch.indices) // 2
    assert stats.pages_reread == 0, "the guest faulted on pages the prefetcher had loaded"


def test_a_resume_whose_memory_reads_fail_ends_with_the_storage_error(
    optimized: tuple[Path, uuid.UUID, str], tmp_path: Path, environment: None
) -> None:
    storage_dir, build_id, _ = optimized
    storage = FailingStorage(storage_dir / "templates", healthy_reads=20)
    build = load_build(storage, build_id, tmp_path)
    with SlotPool() as pool:
        with pytest.raises(BuildError, match="guest memory could not be read from storage") as failed:
            RunningSandbox(build, Environment.resolve(str(storage_dir)), tmp_path / "s", pool, prefetch=False)
        assert "injected failure of a memfile read" in str(failed.value)
        assert "\n" not in str(failed.value)
        assert pool.in_use == []
    assert not any(is_mounted(path) for path in (tmp_path / "s").glob("memory-*.mnt"))

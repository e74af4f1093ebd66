"""``ember api`` and ``ember api-key`` as a user runs them: a real process, flags, SIGTERM."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_api_stub_orchestrator import BASE_BUILD, DOMAIN, StubCluster, free_port

from ember.api import TemplateRegistration, open_store
from ember.api.records import SandboxSpec, SnapshotRecord
from ember.api.templates import register
from ember.build.gc.synthetic import write_synthetic_build
from ember.cli import main
from ember.storage import LocalStorage

e2b = pytest.importorskip("e2b", reason="the e2b SDK is a test extra: pip install -e '.[test]'")


def _ember(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ember", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def cluster() -> Iterator[StubCluster]:
    stub = StubCluster(1)
    yield stub
    stub.close()


def test_api_key_create_prints_a_new_key_each_time_and_list_masks_them(tmp_path: Path) -> None:
    db = f"sqlite://{tmp_path / 'api.sqlite3'}"
    first = _ember("api-key", "create", "-db", db, "-name", "ci")
    second = _ember("api-key", "create", "-db", db)
    assert first.returncode == 0, first.stderr
    keys = [first.stdout.strip(), second.stdout.strip()]
    assert all(key.startswith("e2b_") and len(key) == 44 for key in keys) and keys[0] != keys[1]
    listed = _ember("api-key", "list", "-db", db)
    assert listed.returncode == 0 and keys[0] not in listed.stdout
    assert f"e2b_...{keys[0][-4:]}" in listed.stdout and " ci" in listed.stdout


def test_bad_flags_are_usage_errors() -> None:
    for args in (["api", "-db", "mysql://x", "-port", "0"], ["api", "-template", "base"], ["api", "-nope"]):
        result = _ember(*args)
        assert result.returncode == 2, result
        assert result.stderr.startswith("ember api: ")


def test_ember_api_serves_the_sdk_and_stops_on_sigterm(
    tmp_path: Path, cluster: StubCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = f"sqlite://{tmp_path / 'api.sqlite3'}"
    key = _ember("api-key", "create", "-db", db).stdout.strip()
    port, edge = free_port(), free_port()
    command = [
        sys.executable, "-m", "ember", "api", "-listen", "127.0.0.1", "-port", str(port), "-db", db,
        "-orchestrator", cluster.addresses[0], "-node-proxy-port", str(cluster.proxy_port), "-domain", DOMAIN,
        "-edge-port", str(edge), "-internal-grpc-port", str(free_port()), "-template", f"base={BASE_BUILD}",
        "-max-concurrent-sandboxes", "5",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(5)]
        assert lines[0] == f"ember api: REST API on http://127.0.0.1:{port}\n", lines
        assert lines[1] == f"ember api: edge proxy on http://127.0.0.1:{edge}\n"
        assert lines[3].startswith("ember api: database sqlite://")
        monkeypatch.setenv("E2B_API_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("E2B_SANDBOX_URL", f"http://127.0.0.1:{edge}")
        monkeypatch.setenv("E2B_API_KEY", key)
        sandbox = e2b.Sandbox.create()
        assert sandbox.is_running()
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 204
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert out.endswith("ember api: stopped\n")
    assert "Traceback" not in err
    assert sandbox.sandbox_id in cluster.running()  # stopping the API leaves sandboxes running
    assert os.path.exists(tmp_path / "api.sqlite3")


def test_gc_takes_its_roots_from_the_api_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = LocalStorage(tmp_path / "store" / "templates")
    base = write_synthetic_build(storage, uuid.UUID(BASE_BUILD), seed=1)
    snapshot = write_synthetic_build(storage, uuid.uuid4(), base, seed=2)
    orphan = write_synthetic_build(storage, uuid.uuid4(), base, seed=3)
    two_days_ago = time.time() - 2 * 86400
    for path in (tmp_path / "store").rglob("*"):
        os.utime(path, (two_days_ago, two_days_ago))
    db = f"sqlite://{tmp_path / 'api.sqlite3'}"

    async def rows() -> None:
        store = await open_store(db)
        try:
            team = await store.default_team()
            await register(store, team, TemplateRegistration("base", BASE_BUILD))
            now = dt.datetime.now(dt.UTC)
            spec = SandboxSpec(team.id, "snap", "base", str(snapshot.build_id), 2, 512, 1024, "0.5.4", 24)
            await store.put_snapshot(SnapshotRecord("ipaused", spec, "node", now, now))
        finally:
            await store.close()

    missing = f"sqlite://{tmp_path / 'missing.sqlite3'}"
    assert main(["gc", "-storage", str(tmp_path / "store"), "-db", missing, "-dry-run=false"]) == 2
    assert "there is no database at" in capsys.readouterr().err
    assert not (tmp_path / "missing.sqlite3").exists()
    empty = asyncio.run(open_store(f"sqlite://{tmp_path / 'empty.sqlite3'}"))
    asyncio.run(empty.close())
    assert (
        main(["gc", "-storage", str(tmp_path / "store"), "-db", f"sqlite://{tmp_path / 'empty.sqlite3'}"])
        == 2
    )
    assert "names no build in use" in capsys.readouterr().err
    asyncio.run(rows())
    assert main(["gc", "-storage", str(tmp_path / "store"), "-db", db, "-dry-run=false"]) == 0
    out = capsys.readouterr().out
    assert str(orphan.build_id) in out and "deleted 1 builds" in out
    assert {key.split("/", 1)[0] for key in storage.list("")} == {BASE_BUILD, str(snapshot.build_id)}

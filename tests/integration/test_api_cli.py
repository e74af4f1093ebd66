"""``ember api`` and ``ember api-key`` as a user runs them: a real process, flags, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_api_stub_orchestrator import BASE_BUILD, DOMAIN, StubCluster, free_port

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

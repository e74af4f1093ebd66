"""The official e2b Python SDK, unchanged, against the bundled agent.

The SDK's debug mode (``E2B_DEBUG=true`` / ``debug=True``) skips the E2B API and talks to
envd at ``http://localhost:49983``; this is exactly what a guest's envd must serve. The
``secured`` sandbox is the SDK's view of a sandbox the API created: an access token (so
file URLs are signed) and ember's ``ENVD_VERSION`` (so the SDK's feature gates apply).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envd_agent import port_in_use, running_agent

from ember.envd import ENVD_VERSION, build_agent

e2b = pytest.importorskip("e2b", reason="the e2b SDK is a test extra: pip install -e '.[test]'")
envd_versions = pytest.importorskip("e2b.envd.versions")
PtySize = pytest.importorskip("e2b.sandbox.commands.command_handle").PtySize
Version = pytest.importorskip("packaging.version").Version

SDK_ENVD_PORT = 49983


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if port_in_use(SDK_ENVD_PORT):
        pytest.skip(f"port {SDK_ENVD_PORT} is taken: the SDK's debug mode can only reach envd there")
    bundle = build_agent(tmp_path_factory.mktemp("envd") / "envd")
    with running_agent(bundle, tmp_path_factory.mktemp("home"), port=SDK_ENVD_PORT):
        yield e2b.Sandbox.create(debug=True)


def test_commands_run_returns_stdout_and_exit_code(sandbox: Any) -> None:
    result = sandbox.commands.run("echo hi; echo there >&2")
    assert (result.stdout, result.stderr, result.exit_code) == ("hi\n", "there\n", 0)


def test_failing_command_raises_the_sdk_exit_exception(sandbox: Any) -> None:
    with pytest.raises(e2b.CommandExitException) as caught:
        sandbox.commands.run("exit 3")
    assert caught.value.exit_code == 3


def test_background_command_can_be_listed_and_killed(sandbox: Any) -> None:
    handle = sandbox.commands.run("sleep 100", background=True)
    assert handle.pid in {process.pid for process in sandbox.commands.list()}
    assert sandbox.commands.kill(handle.pid)
    with pytest.raises(e2b.CommandExitException):
        handle.wait()


def test_files_write_read_and_list(sandbox: Any, tmp_path: Path) -> None:
    info = sandbox.files.write(str(tmp_path / "dir" / "a.txt"), "hello")
    sandbox.files.write(str(tmp_path / "dir" / "b.bin"), b"\x00\xff\r\n")
    assert info.path == str(tmp_path / "dir" / "a.txt")
    assert sandbox.files.read(str(tmp_path / "dir" / "a.txt")) == "hello"
    assert sandbox.files.read(str(tmp_path / "dir" / "b.bin"), format="bytes") == b"\x00\xff\r\n"
    assert [entry.name for entry in sandbox.files.list(str(tmp_path / "dir"))] == ["a.txt", "b.bin"]


def test_files_exists_make_dir_rename_remove(sandbox: Any, tmp_path: Path) -> None:
    assert sandbox.files.make_dir(str(tmp_path / "d"))
    assert not sandbox.files.make_dir(str(tmp_path / "d"))
    sandbox.files.write(str(tmp_path / "d" / "f"), "x")
    renamed = sandbox.files.rename(str(tmp_path / "d" / "f"), str(tmp_path / "d" / "g"))
    assert renamed.name == "g"
    assert sandbox.files.exists(str(tmp_path / "d" / "g"))
    sandbox.files.remove(str(tmp_path / "d"))
    assert not sandbox.files.exists(str(tmp_path / "d"))


def test_reading_a_missing_file_raises_not_found(sandbox: Any, tmp_path: Path) -> None:
    with pytest.raises(e2b.NotFoundException):
        sandbox.files.read(str(tmp_path / "missing"))


def test_stdin_reaches_a_background_command(sandbox: Any) -> None:
    handle = sandbox.commands.run("cat", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "typed")
    sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "typed"


def test_commands_connect_reattaches_to_a_running_command(sandbox: Any) -> None:
    handle = sandbox.commands.run("read line; echo got $line", background=True, stdin=True)
    handle.disconnect()
    attached = sandbox.commands.connect(handle.pid)
    sandbox.commands.send_stdin(handle.pid, "x\n")
    assert attached.wait().stdout == "got x\n"


def test_watch_dir_reports_a_created_file(sandbox: Any, tmp_path: Path) -> None:
    watcher = sandbox.files.watch_dir(str(tmp_path))
    (tmp_path / "new.txt").write_text("x")
    try:
        events = watcher.get_new_events()
    finally:
        watcher.stop()
    assert [(event.name, event.type.name) for event in events] == [("new.txt", "CREATE")]


# ---- a secured sandbox at the version ember claims -------------------------------------------------

TOKEN = "sdk-secret-token"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The SDK's own ``Sandbox`` for an agent holding an access token, gated at ``ENVD_VERSION``.

    It is built as ``Sandbox.create`` builds one from the API's answer (``envdVersion``,
    ``envdAccessToken``), with ``sandbox_url`` pointing the SDK at this agent's port.
    """
    bundle = build_agent(tmp_path_factory.mktemp("envd") / "envd")
    with running_agent(bundle, tmp_path_factory.mktemp("home")) as agent:
        agent.client().init(access_token=TOKEN)
        config = e2b.ConnectionConfig(
            debug=True,
            sandbox_url=agent.url,
            extra_sandbox_headers={"X-Access-Token": TOKEN, "E2b-Sandbox-Id": "ember-test"},
        )
        yield e2b.Sandbox(
            sandbox_id="ember-test",
            sandbox_domain=None,
            envd_version=Version(ENVD_VERSION),
            envd_access_token=TOKEN,
            traffic_access_token=None,
            connection_config=config,
        )


def test_the_claimed_version_is_one_the_sdk_accepts_and_turns_every_gate_on() -> None:
    version = Version(ENVD_VERSION)
    assert version >= Version("0.1.0")
    gates = [value for name, value in vars(envd_versions).items() if name.startswith("ENVD_")]
    assert [gate for gate in gates if gate > version] == [envd_versions.ENVD_DEBUG_FALLBACK]
    assert version >= Version("0.2.4")  # get_metrics with disk figures


def test_pty_session_runs_a_command_and_reports_its_exit_code(secured: Any) -> None:
    handle = secured.pty.create(PtySize(rows=24, cols=80), timeout=30)
    secured.pty.send_stdin(handle.pid, b"echo answer-$((6*7)) $TERM; tty; exit 3\n")
    output = bytearray()
    with pytest.raises(e2b.CommandExitException) as caught:
        handle.wait(on_pty=output.extend)
    assert caught.value.exit_code == 3
    assert b"answer-42 xterm-256color\r\n" in output
    assert b"/dev/pts/" in output


def test_pty_starts_with_the_requested_size_and_resize_changes_it(secured: Any) -> None:
    handle = secured.pty.create(PtySize(rows=30, cols=100), timeout=30)
    secured.pty.send_stdin(handle.pid, b"stty size\n")
    output = bytearray()
    resized: list[bool] = []

    def on_pty(chunk: bytes) -> None:
        output.extend(chunk)
        if b"30 100\r\n" in output and not resized:
            resized.append(True)
            secured.pty.resize(handle.pid, PtySize(rows=40, cols=120))
            secured.pty.send_stdin(handle.pid, b"stty size; exit\n")

    assert handle.wait(on_pty=on_pty).exit_code == 0
    assert b"40 120\r\n" in bytes(output).split(b"30 100\r\n", 1)[1]


def test_stdin_typed_into_a_pty_reaches_cat_and_echoes(secured: Any) -> None:
    handle = secured.pty.create(PtySize(rows=24, cols=80), timeout=30)
    secured.pty.send_stdin(handle.pid, b"echo READY-$((2+3)); cat; echo DONE-$((3+4))\n")
    output = bytearray()
    sent: set[str] = set()

    def on_pty(chunk: bytes) -> None:
        output.extend(chunk)
        if b"READY-5" in output and "line" not in sent:
            sent.add("line")
            secured.pty.stream_input(handle.pid, [b"hello ", "pty\n"])
        if output.count(b"hello pty\r\n") >= 2 and "eof" not in sent:
            sent.add("eof")  # one echoed by the terminal, one written back by cat
            secured.pty.send_stdin(handle.pid, b"\x04")
        if b"DONE-7" in output and "exit" not in sent:
            sent.add("exit")
            secured.pty.send_stdin(handle.pid, b"exit 0\n")

    assert handle.wait(on_pty=on_pty).exit_code == 0
    assert output.count(b"hello pty\r\n") == 2


def test_pty_connect_reattaches_to_a_running_terminal(secured: Any) -> None:
    first = secured.pty.create(PtySize(rows=24, cols=80), timeout=30)
    first.disconnect()
    attached = secured.pty.connect(first.pid, timeout=30)
    assert attached.pid == first.pid
    secured.pty.send_stdin(first.pid, b"echo again-$((40+2)); exit 5\n")
    output = bytearray()
    with pytest.raises(e2b.CommandExitException) as caught:
        attached.wait(on_pty=output.extend)
    assert caught.value.exit_code == 5
    assert b"again-42" in output


def test_killing_a_pty_ends_it_as_killed(secured: Any) -> None:
    handle = secured.pty.create(PtySize(rows=24, cols=80), timeout=30)
    assert secured.pty.kill(handle.pid)
    with pytest.raises(e2b.CommandExitException) as caught:
        handle.wait()
    assert caught.value.exit_code == -1
    assert not secured.pty.kill(handle.pid)


def test_commands_still_refuse_pty_input_and_ptys_refuse_stdin(secured: Any) -> None:
    command = secured.commands.run("sleep 30", background=True, stdin=True)
    try:
        with pytest.raises(e2b.SandboxException, match="has no pty"):
            secured.pty.send_stdin(command.pid, b"x")
        with pytest.raises(e2b.SandboxException, match="has no pty"):
            secured.pty.resize(command.pid, PtySize(rows=10, cols=10))
    finally:
        secured.commands.kill(command.pid)
    terminal = secured.pty.create(PtySize(rows=24, cols=80), timeout=30)
    try:
        with pytest.raises(e2b.SandboxException, match="has a pty"):
            secured.commands.send_stdin(terminal.pid, "x")
    finally:
        secured.pty.kill(terminal.pid)


def _fetch(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def _multipart(filename: str, content: bytes) -> tuple[bytes, dict[str, str]]:
    body = (
        b'--B0undary\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n%s\r\n--B0undary--\r\n" % (filename.encode(), content)
    )
    return body, {"Content-Type": "multipart/form-data; boundary=B0undary"}


def test_signed_download_url_works_without_the_token(secured: Any, tmp_path: Path) -> None:
    target = tmp_path / "signed.txt"
    target.write_bytes(b"signed content")
    assert _fetch(secured.download_url(str(target))) == (200, b"signed content")
    assert _fetch(secured.download_url(str(target), use_signature_expiration=60)) == (200, b"signed content")
    assert _fetch(secured.download_url(str(target), user="root")) == (200, b"signed content")


def test_signed_upload_url_accepts_a_multipart_post_without_the_token(secured: Any, tmp_path: Path) -> None:
    target = tmp_path / "uploaded" / "file.bin"
    body, headers = _multipart("ignored-name", b"\x00uploaded\xff")
    status, reply = _fetch(secured.upload_url(str(target), use_signature_expiration=60), body, headers)
    assert status == 200, reply
    assert json.loads(reply) == [{"path": str(target), "name": "file.bin", "type": "file"}]
    assert target.read_bytes() == b"\x00uploaded\xff"


def _refusal(status: int, body: bytes) -> str:
    assert status == 401, body
    error = json.loads(body)
    assert error["code"] == 401
    message: str = error["message"]
    return message


def test_tampered_or_expired_or_missing_signatures_are_refused(secured: Any, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    url = secured.download_url(str(tmp_path / "a.txt"))
    other_path = url.replace(urllib.parse.quote(str(tmp_path / "a.txt"), safe=""), str(tmp_path / "b.txt"))
    assert "invalid signature" in _refusal(*_fetch(other_path))
    as_another_user = url + "&username=root"
    assert "invalid signature" in _refusal(*_fetch(as_another_user))
    read_url_used_to_write = secured.download_url(str(tmp_path / "b.txt"))
    assert "invalid signature" in _refusal(*_fetch(read_url_used_to_write, *_multipart("x", b"overwritten")))
    assert (tmp_path / "b.txt").read_text() == "b"
    expired = secured.download_url(str(tmp_path / "a.txt"), use_signature_expiration=-5)
    assert "expired" in _refusal(*_fetch(expired))
    longer = secured.download_url(str(tmp_path / "a.txt"), use_signature_expiration=60)
    stretched = re.sub(
        r"signature_expiration=(\d+)", lambda m: f"signature_expiration={int(m[1]) + 3600}", longer
    )
    assert "invalid signature" in _refusal(*_fetch(stretched))
    unsigned = url.split("&signature=")[0]
    assert "X-Access-Token" in _refusal(*_fetch(unsigned))
    assert "does not match" in _refusal(*_fetch(url, headers={"X-Access-Token": "wrong"}))


def test_metrics_carry_the_fields_get_metrics_reports(secured: Any) -> None:
    url = secured.envd_api_url + "/metrics"
    _refusal(*_fetch(url))
    status, body = _fetch(url, headers={"X-Access-Token": TOKEN})
    assert status == 200
    metrics = json.loads(body)
    assert set(metrics) >= {
        "ts", "cpu_count", "cpu_used_pct", "mem_total", "mem_used", "mem_cache", "disk_used", "disk_total",
    }  # fmt: skip
    assert abs(metrics["ts"] - time.time()) < 10
    assert metrics["cpu_count"] == os.cpu_count()
    assert isinstance(metrics["cpu_used_pct"], float) and 0 <= metrics["cpu_used_pct"] <= 100
    assert 0 < metrics["mem_used"] < metrics["mem_total"] and 0 <= metrics["mem_cache"] < metrics["mem_total"]
    statvfs = os.statvfs("/")
    assert metrics["disk_total"] == statvfs.f_blocks * statvfs.f_frsize
    assert 0 < metrics["disk_used"] <= metrics["disk_total"]


def test_file_metadata_is_written_read_and_replaced(secured: Any, tmp_path: Path) -> None:
    target = str(tmp_path / "meta.txt")
    written = secured.files.write(target, "x", metadata={"Author": "ember", "purpose": "test"})
    assert written.metadata == {"author": "ember", "purpose": "test"}
    assert secured.files.get_info(target).metadata == {"author": "ember", "purpose": "test"}
    assert [entry.metadata for entry in secured.files.list(str(tmp_path))] == [
        {"author": "ember", "purpose": "test"}
    ]
    assert secured.files.write(target, "y", metadata={"author": "again"}).metadata == {"author": "again"}
    assert secured.files.write(target, "z").metadata is None
    assert secured.files.get_info(target).metadata is None


def test_gzip_reads_decode_to_the_file(secured: Any, tmp_path: Path) -> None:
    content = b"compressible " * 10_000
    (tmp_path / "big.txt").write_bytes(content)
    assert secured.files.read(str(tmp_path / "big.txt"), format="bytes", gzip=True) == content
    req = urllib.request.Request(
        secured.download_url(str(tmp_path / "big.txt")), headers={"Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(req, timeout=10) as reply:
        assert reply.headers["Content-Encoding"] == "gzip"
        packed = reply.read()
    assert len(packed) < len(content) // 10
    assert gzip.decompress(packed) == content


def test_watch_with_entries_and_network_mounts_allowed_passes_the_sdk_gates(
    secured: Any, tmp_path: Path
) -> None:
    watcher = secured.files.watch_dir(str(tmp_path), include_entry=True, allow_network_mounts=True)
    (tmp_path / "seen.txt").write_text("x")
    try:
        events = watcher.get_new_events()
    finally:
        watcher.stop()
    assert [(event.name, event.type.name) for event in events] == [("seen.txt", "CREATE")]

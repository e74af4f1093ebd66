"""E2B's Python SDK, unchanged, against a real ``ember serve``: QEMU guests boot, pause and resume.

The SDK is pointed at serve as a user points it, with the four variables serve prints
(``sdk_env`` in conftest). Every test makes its own sandboxes (tagged with the test's
metadata, so ``Sandbox.list`` is filtered to them) and kills them. One serve runs for the
session; the PostgreSQL test runs a second one beside it, and the restart test, last,
stops and starts the session's serve on its storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import e2b
import pytest
from google.protobuf import empty_pb2
from serve_harness import (
    SANDBOX_TIMEOUT_S,
    Postgres,
    Sandboxes,
    ServeProcess,
    host_ipv4_addresses,
    qemu_processes,
    sandbox_host_ip,
)

pytestmark = [pytest.mark.vm, pytest.mark.root]

_T = TypeVar("_T")

# A process whose progress survives a pause only if the process does: a counter file it
# rewrites every 0.2 s (renamed into place, so a reader never sees it half-written).
COUNTER = (
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.2; done"
)
UNKNOWN_ID = "i" + "a" * 20


def wait_until(check: Callable[[], _T], timeout_s: float, what: str, interval_s: float = 0.2) -> _T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def start_counter(sandbox: Any) -> int:
    """COUNTER in the background (its stream let go: the process stays), once it reached 5."""
    handle = sandbox.commands.run(COUNTER, background=True)
    handle.disconnect()
    return wait_until(lambda: (value := read_count(sandbox)) >= 5 and value, 30, "the counter to reach 5")


def read_count(sandbox: Any) -> int:
    text = sandbox.commands.run("cat /tmp/count 2>/dev/null || true").stdout.strip()
    return int(text) if text else 0


def counter_advances(sandbox: Any, since: int) -> int:
    """The counter is at ``since`` or past it (not back at 1) and still counting: the very process
    that ran before, running now (a stale file would not move, a new process would start at 1)."""
    now = read_count(sandbox)
    assert now >= since, f"the counter went back from {since} to {now}"
    return wait_until(lambda: (value := read_count(sandbox)) > now and value, 30, "the counter to advance")


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    """(status, content type, body) of one plain-urllib request; error statuses too."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers.get("Content-Type", ""), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def envd_host(sandbox_id: str, env: dict[str, str]) -> str:
    return f"49983-{sandbox_id}.{env['E2B_DOMAIN']}"


def node_sandbox_ids(serve: ServeProcess) -> set[str]:
    with serve.node() as node:
        return {entry.sandbox_id for entry in node.List(empty_pb2.Empty(), timeout=10).sandboxes}


def test_commands_stream_their_output_and_report_exit_codes(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.create()
    out: list[str] = []
    err: list[str] = []
    result = sandbox.commands.run(
        "echo one; echo two >&2; sleep 0.2; echo three", on_stdout=out.append, on_stderr=err.append
    )
    assert (result.exit_code, result.stdout, result.stderr) == (0, "one\nthree\n", "two\n")
    assert ("".join(out), "".join(err)) == ("one\nthree\n", "two\n")
    assert (
        sandbox.commands.run("pwd; echo $GREETING", cwd="/tmp", envs={"GREETING": "hi"}).stdout
        == "/tmp\nhi\n"
    )
    with pytest.raises(e2b.CommandExitException) as caught:
        sandbox.commands.run("echo about to fail >&2; exit 3")
    assert caught.value.exit_code == 3
    assert caught.value.stderr == "about to fail\n"
    assert sandbox.commands.run("python3 -c 'print(6 * 7)'").stdout == "42\n"


def test_a_background_command_runs_until_killed(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.create()
    handle = sandbox.commands.run("echo started > /tmp/bg; exec sleep 600", background=True)
    wait_until(lambda: sandbox.files.exists("/tmp/bg"), 30, "the background command to start")
    running = {process.pid: process for process in sandbox.commands.list()}
    assert handle.pid in running
    assert running[handle.pid].cmd == "/bin/bash"  # the SDK runs commands as `bash -l -c ...`
    assert sandbox.commands.run("sleep 0.1; echo meanwhile").stdout == "meanwhile\n"
    assert handle.kill() is True
    with pytest.raises(e2b.CommandExitException):
        handle.wait()  # SIGKILL: it ends without an exit code of its own
    assert handle.pid not in {process.pid for process in sandbox.commands.list()}
    assert sandbox.commands.kill(handle.pid) is False


def test_files_are_written_read_listed_and_watched(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.create()
    sandbox.files.write("/tmp/e2e/notes.txt", "first line\n")  # makes the missing directory
    blob = bytes(range(256)) * 257
    sandbox.files.write("/tmp/e2e/blob.bin", blob)
    assert sandbox.files.read("/tmp/e2e/notes.txt") == "first line\n"
    assert sandbox.files.read("/tmp/e2e/blob.bin", format="bytes") == blob
    digest = sandbox.commands.run("sha256sum < /tmp/e2e/blob.bin").stdout.split()[0]
    assert digest == hashlib.sha256(blob).hexdigest()
    listed = {entry.name: entry for entry in sandbox.files.list("/tmp/e2e")}
    assert sorted(listed) == ["blob.bin", "notes.txt"]
    assert listed["blob.bin"].size == len(blob)
    assert listed["blob.bin"].type == e2b.FileType.FILE
    assert listed["notes.txt"].path == "/tmp/e2e/notes.txt"

    watch = sandbox.files.watch_dir("/tmp/e2e")
    seen: list[tuple[str, Any]] = []

    def events() -> bool:
        seen.extend((event.name, event.type) for event in watch.get_new_events())
        return ("new.txt", e2b.FilesystemEventType.CREATE) in seen and any(
            name == "notes.txt" and kind == e2b.FilesystemEventType.WRITE for name, kind in seen
        )

    try:
        sandbox.files.write("/tmp/e2e/new.txt", "fresh")
        sandbox.commands.run("echo second line >> /tmp/e2e/notes.txt")
        wait_until(events, 20, "watch events for new.txt and notes.txt")
    finally:
        watch.stop()
    assert sandbox.files.read("/tmp/e2e/notes.txt") == "first line\nsecond line\n"


def test_pause_and_connect_keep_files_and_processes_and_the_list_shows_both_states(
    sandboxes: Sandboxes,
) -> None:
    kept = sandboxes.create(metadata={"color": "red"})
    paused = sandboxes.create(metadata={"color": "blue"})
    paused.files.write("/root/kept.txt", "written before the pause")
    before = start_counter(paused)
    assert paused.pause() is True
    assert paused.pause() is False  # already paused
    assert sandboxes.listed() == {kept.sandbox_id: "running", paused.sandbox_id: "paused"}
    assert sandboxes.listed(metadata={"color": "red"}) == {kept.sandbox_id: "running"}
    assert sandboxes.listed(state=[e2b.SandboxState.PAUSED]) == {paused.sandbox_id: "paused"}
    assert sandboxes.listed(metadata={"color": "red"}, state=[e2b.SandboxState.PAUSED]) == {}
    info = e2b.Sandbox.get_info(paused.sandbox_id)
    assert info.state == e2b.SandboxState.PAUSED
    assert info.metadata["color"] == "blue"

    resumed = e2b.Sandbox.connect(paused.sandbox_id)
    assert resumed.sandbox_id == paused.sandbox_id
    assert resumed.files.read("/root/kept.txt") == "written before the pause"
    counter_advances(resumed, before)
    assert sandboxes.listed(state=[e2b.SandboxState.RUNNING]) == {
        kept.sandbox_id: "running",
        paused.sandbox_id: "running",
    }
    assert e2b.Sandbox.connect(kept.sandbox_id).commands.run("echo still").stdout == "still\n"


def test_timeouts_info_and_metrics(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.create(timeout=60, metadata={"purpose": "info"})
    info = sandbox.get_info()
    assert info.sandbox_id == sandbox.sandbox_id
    assert info.state == e2b.SandboxState.RUNNING
    assert info.name == "base"
    assert info.metadata["purpose"] == "info"
    assert (info.cpu_count, info.memory_mb) == (2, 512)
    assert dt.timedelta(seconds=50) <= info.end_at - info.started_at <= dt.timedelta(seconds=61)
    sandbox.set_timeout(600)
    assert sandbox.get_info().end_at - dt.datetime.now(dt.UTC) > dt.timedelta(seconds=590)
    sandbox.set_timeout(30)
    assert sandbox.get_info().end_at - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=30)

    sandbox.commands.run("head -c 8M /dev/urandom > /root/ballast")  # some disk and page cache in use
    metrics = wait_until(sandbox.get_metrics, 30, "metrics")
    latest = metrics[-1]
    assert latest.cpu_count == 2
    assert 0 <= latest.cpu_used_pct <= 100
    assert 256 << 20 < latest.mem_total <= 512 << 20
    assert 0 < latest.mem_used < latest.mem_total
    assert 512 << 20 < latest.disk_total <= 1 << 30
    assert 8 << 20 < latest.disk_used < latest.disk_total
    assert abs(latest.timestamp - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=2)


def test_a_pty_session_and_a_signed_download_url(sandboxes: Sandboxes, sdk_env: dict[str, str]) -> None:
    sandbox = sandboxes.create()
    output = bytearray()
    terminal = sandbox.pty.create(e2b.PtySize(rows=24, cols=80), timeout=60)
    sandbox.pty.send_stdin(terminal.pid, b"echo pty-$((6*7)) $TERM; exit\n")
    result = terminal.wait(on_pty=output.extend)
    assert result.exit_code == 0
    assert b"pty-42 xterm-256color" in output  # computed by the shell: not the echo of what was typed

    sandbox.files.write("/tmp/download.txt", "signed bytes")
    url = sandbox.download_url("/tmp/download.txt", use_signature_expiration=120)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["signature"][0].startswith("v1_") and "signature_expiration" in query
    # With E2B_SANDBOX_URL the URL points at the edge and carries no routing header: the edge
    # finds the sandbox by the signature, so the URL works as the SDK made it.
    assert http("GET", url)[::2] == (200, b"signed bytes")
    # Unsigned and forged URLs name no sandbox: send them as a wildcard DNS name would, with the
    # sandbox's Host, so that envd itself refuses them.
    host = {"Host": envd_host(sandbox.sandbox_id, sdk_env)}
    assert http("GET", url, headers=host)[::2] == (200, b"signed bytes")
    unsigned = url.split("&signature=")[0]
    status, kind, body = http("GET", unsigned, headers=host)
    assert (status, kind) == (401, "application/json")
    assert json.loads(body)["code"] == 401
    forged = {**{name: values[0] for name, values in query.items()}, "signature": "v1_" + "A" * 43}
    forged_url = urllib.parse.urlsplit(url)._replace(query=urllib.parse.urlencode(forged)).geturl()
    assert http("GET", forged_url, headers=host)[0] == 401
    upload = sandbox.upload_url("/tmp/uploaded.txt", use_signature_expiration=120)
    boundary = "e2e-boundary"
    form = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="uploaded.txt"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\nvia a signed url\r\n--{boundary}--\r\n"
    ).encode()
    headers = {**host, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    assert http("POST", upload, form, headers)[0] == 200
    assert sandbox.files.read("/tmp/uploaded.txt") == "via a signed url"


def test_kill_ends_running_and_paused_sandboxes_and_the_list_forgets_them(
    sandboxes: Sandboxes, serve: ServeProcess
) -> None:
    running = sandboxes.create()
    paused = sandboxes.create()
    paused.pause()
    assert running.sandbox_id in node_sandbox_ids(serve)
    assert running.kill() is True
    assert e2b.Sandbox.kill(paused.sandbox_id) is True
    assert sandboxes.listed() == {}
    assert e2b.Sandbox.kill(running.sandbox_id) is False
    with pytest.raises(e2b.NotFoundException):
        running.get_info()
    with pytest.raises(e2b.NotFoundException):
        e2b.Sandbox.connect(paused.sandbox_id)  # its snapshot went with it
    assert running.is_running() is False
    assert running.sandbox_id not in node_sandbox_ids(serve)
    wait_until(
        lambda: not any(f"sandbox-{running.sandbox_id} " in cmd for _, cmd in qemu_processes()),
        30,
        "the killed sandbox's QEMU to exit",
    )


def test_on_timeout_pause_then_a_command_auto_resumes_it_through_the_edge(
    sandboxes: Sandboxes, serve: ServeProcess
) -> None:
    sandbox = sandboxes.create(timeout=10, lifecycle={"on_timeout": "pause", "auto_resume": True})
    assert sandbox.get_info().lifecycle == {"on_timeout": "pause", "auto_resume": True}
    sandbox.files.write("/root/before.txt", "from before the timeout")
    before = start_counter(sandbox)
    wait_until(lambda: sandboxes.listed().get(sandbox.sandbox_id) == "paused", 60, "the timeout's pause")
    wait_until(lambda: sandbox.sandbox_id not in node_sandbox_ids(serve), 60, "the pause to end on the node")
    # The same SDK object: its envd call reaches the edge, which finds no running sandbox and
    # resumes it (auto-resume) before relaying the call.
    assert sandbox.commands.run("cat /root/before.txt").stdout == "from before the timeout"
    counter_advances(sandbox, before)
    info = sandbox.get_info()
    assert info.state == e2b.SandboxState.RUNNING
    assert info.end_at - dt.datetime.now(dt.UTC) > dt.timedelta(seconds=60)  # not paused again at once


def test_fork_makes_three_sandboxes_that_share_the_past_and_then_diverge(sandboxes: Sandboxes) -> None:
    parent = sandboxes.create(metadata={"role": "parent"})
    parent.files.write("/root/inherited.txt", "from the parent")
    before = start_counter(parent)
    forks = parent.fork(count=3, timeout=SANDBOX_TIMEOUT_S)
    sandboxes.ids.extend(fork.sandbox_id for fork in forks if isinstance(fork, e2b.Sandbox))
    assert [type(fork) for fork in forks] == [e2b.Sandbox] * 3, forks
    ids = {fork.sandbox_id for fork in forks}
    assert len(ids) == 3 and parent.sandbox_id not in ids
    for number, fork in enumerate(forks):
        assert fork.files.read("/root/inherited.txt") == "from the parent"
        counter_advances(fork, before)  # the parent's process goes on in each fork
        fork.files.write(f"/root/fork-{number}.txt", str(number))
    for number, fork in enumerate(forks):
        present = [fork.files.exists(f"/root/fork-{other}.txt") for other in range(3)]
        assert present == [other == number for other in range(3)]
    assert not any(parent.files.exists(f"/root/fork-{other}.txt") for other in range(3))
    assert parent.get_info().state == e2b.SandboxState.RUNNING
    counter_advances(parent, before)
    listed = sandboxes.listed(state=[e2b.SandboxState.RUNNING])
    assert {parent.sandbox_id, *ids} <= set(listed)


def _error_body(status: int, kind: str, body: bytes) -> dict[str, Any]:
    assert kind.startswith("application/json"), (status, kind, body)
    parsed = json.loads(body)
    assert isinstance(parsed["code"], int) and isinstance(parsed["message"], str), parsed
    assert parsed["code"] == status, parsed
    return dict(parsed)


def test_errors_reach_the_sdk_as_its_exceptions_and_every_error_body_is_json(
    sandboxes: Sandboxes, sdk_env: dict[str, str]
) -> None:
    wrong_key = "e2b_" + "0" * 40
    with pytest.raises(e2b.AuthenticationException):
        e2b.Sandbox.create("base", api_key=wrong_key)
    with pytest.raises(e2b.AuthenticationException):
        e2b.Sandbox.list(api_key=wrong_key).next_items()
    with pytest.raises(e2b.NotFoundException):
        e2b.Sandbox.get_info(UNKNOWN_ID)
    with pytest.raises(e2b.NotFoundException):
        e2b.Sandbox.connect(UNKNOWN_ID)
    with pytest.raises(e2b.NotFoundException):
        e2b.Sandbox.set_timeout(UNKNOWN_ID, 30)
    assert e2b.Sandbox.kill(UNKNOWN_ID) is False
    with pytest.raises(e2b.SandboxException, match=r"^404: "):
        e2b.Sandbox.create("no-such-template")
    with pytest.raises(e2b.SandboxException, match=r"^400: "):
        e2b.Sandbox.create("base", timeout=-5)

    sandbox = sandboxes.create()
    with pytest.raises(e2b.FileNotFoundException):
        sandbox.files.read("/no/such/file")
    with pytest.raises(e2b.NotFoundException):
        sandbox.commands.connect(99999)
    sandbox.kill()
    with pytest.raises(e2b.SandboxNotRunningException):
        sandbox.commands.run("true")

    api, edge = sdk_env["E2B_API_URL"], sdk_env["E2B_SANDBOX_URL"]
    key = {"X-API-Key": sdk_env["E2B_API_KEY"]}
    as_json = {**key, "Content-Type": "application/json"}
    envd = {"E2b-Sandbox-Id": UNKNOWN_ID, "E2b-Sandbox-Port": "49983"}
    cases: list[tuple[str, str, bytes | None, dict[str, str], int]] = [
        ("POST", f"{api}/v2/sandboxes", b'{"templateID": "base",', as_json, 400),
        ("POST", f"{api}/v2/sandboxes", b"[1, 2]", as_json, 400),
        ("POST", f"{api}/v2/sandboxes", b'{"templateID": 7}', as_json, 400),
        ("POST", f"{api}/v2/sandboxes", b'{"templateID": "base"}', {}, 401),
        ("POST", f"{api}/v2/sandboxes", b'{"templateID": "base"}', {**as_json, "X-API-Key": wrong_key}, 401),
        ("POST", f"{api}/sandboxes", b'{"templateID": "base", "timeout": 0}', as_json, 400),
        ("GET", f"{api}/sandboxes/{UNKNOWN_ID}", None, key, 404),
        ("GET", f"{api}/sandboxes/not!an!id", None, key, 400),
        ("DELETE", f"{api}/sandboxes/{UNKNOWN_ID}", None, key, 404),
        ("POST", f"{api}/sandboxes/{UNKNOWN_ID}/pause", b"{}", as_json, 404),
        ("POST", f"{api}/sandboxes/{UNKNOWN_ID}/timeout", b'{"timeout": "soon"}', as_json, 400),
        ("POST", f"{api}/v2/sandboxes/{UNKNOWN_ID}/connect", b"{}", as_json, 404),
        ("POST", f"{api}/sandboxes/{UNKNOWN_ID}/fork", b'{"count": 1}', as_json, 404),
        ("GET", f"{api}/v2/sandboxes?state=sleeping", None, key, 400),
        ("GET", f"{api}/v2/sandboxes?nextToken=garbage", None, key, 400),
        ("GET", f"{api}/v2/sandboxes?limit=1000", None, key, 400),
        ("GET", f"{api}/sandboxes/{UNKNOWN_ID}/metrics", None, key, 404),
        ("GET", f"{api}/no/such/route", None, key, 404),
        ("PUT", f"{api}/v2/sandboxes", b"{}", as_json, 405),
        ("GET", f"{edge}/files?path=/etc/hostname", None, {}, 400),  # no route: an IP Host, no headers
        ("GET", f"{edge}/health", None, {"E2b-Sandbox-Id": UNKNOWN_ID}, 400),
        ("GET", f"{edge}/health", None, {**envd, "E2b-Sandbox-Port": "many"}, 400),
        ("GET", f"{edge}/health", None, envd, 502),
        (
            "GET",
            f"{edge}/files?path=/etc/hostname",
            None,
            {"Host": envd_host(sandbox.sandbox_id, sdk_env)},
            502,
        ),
    ]
    for method, url, body, headers, status in cases:
        answer = http(method, url, body, headers)
        assert answer[0] == status, (method, url, answer)
        _error_body(*answer)


PROBE = r"""
import json, socket, sys, concurrent.futures as futures
def probe(target):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        return target, "open"
    except OSError as exc:
        return target, type(exc).__name__
with futures.ThreadPoolExecutor(32) as pool:
    print(json.dumps(dict(pool.map(probe, sys.argv[1:]))))
"""


@contextlib.contextmanager
def host_listener() -> Iterator[int]:
    """A TCP port on every host address (0.0.0.0), as a service bound carelessly would be."""
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


def test_a_sandbox_reaches_no_host_service_and_no_other_sandbox(
    sandboxes: Sandboxes, serve: ServeProcess, sdk_env: dict[str, str]
) -> None:
    prober = sandboxes.create()
    target = sandboxes.create()
    target.commands.run("python3 -m http.server 8000 --bind 0.0.0.0", background=True).disconnect()
    prober.commands.run("python3 -m http.server 8001 --bind 127.0.0.1", background=True).disconnect()
    prober.files.write("/root/probe.py", PROBE)
    route = prober.commands.run("ip route show default").stdout.split()
    gateway = route[route.index("via") + 1]
    target_ip = str(sandbox_host_ip(target.sandbox_id))
    prober_ip = str(sandbox_host_ip(prober.sandbox_id))
    assert {prober.sandbox_id, target.sandbox_id} <= node_sandbox_ids(serve)
    # The host reaches the target's server, through the edge and at the target's host address.
    wait_until(
        lambda: (
            http(
                "GET",
                f"{sdk_env['E2B_SANDBOX_URL']}/",
                headers={"Host": f"8000-{target.sandbox_id}.{sdk_env['E2B_DOMAIN']}"},
            )[0]
            == 200
        ),
        30,
        "the target's HTTP server",
    )
    socket.create_connection((target_ip, 8000), timeout=5).close()

    with host_listener() as canary:
        addresses = sorted({*host_ipv4_addresses(), gateway, prober_ip})
        for address in addresses:  # every host address is reachable from the host itself
            if address not in (gateway, prober_ip):
                socket.create_connection((address, canary), timeout=5).close()
        ports = sorted({*serve.ports.all().values(), canary})
        targets = [f"{address}:{port}" for address in addresses for port in ports]
        targets += [f"{target_ip}:8000", f"{target_ip}:49983", "127.0.0.1:8001"]
        probed = prober.commands.run("python3 /root/probe.py " + " ".join(targets), timeout=120)
    outcomes = json.loads(probed.stdout)
    assert outcomes.pop("127.0.0.1:8001") == "open"  # the probe does see an open port
    opened = sorted(target for target, outcome in outcomes.items() if outcome == "open")
    assert opened == [], f"reachable from inside a sandbox: {opened}"
    assert len(outcomes) == len(targets) - 1


def test_the_core_flow_on_a_postgresql_database(
    serve: ServeProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second serve, on the same storage (the base build is there) but a PostgreSQL database."""
    import psycopg

    from ember.api import TemplateRegistration, open_store
    from ember.api.templates import register
    from ember.envd import ENVD_VERSION

    try:
        postgres = Postgres()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        db_url = postgres.create_database("ember_e2e")
        status, _, body = http(
            "GET",
            f"{serve.env['E2B_API_URL']}/templates/base",
            headers={"X-API-Key": serve.env["E2B_API_KEY"]},
        )
        assert status == 200
        build_id = json.loads(body)["buildID"]  # the current build

        async def register_base() -> None:
            store = await open_store(db_url)
            try:
                base = TemplateRegistration(
                    "base", build_id, vcpu=2, ram_mb=512, disk_mb=1024, envd_version=ENVD_VERSION
                )
                await register(store, await store.default_team(), base)
            finally:
                await store.close()

        asyncio.run(register_base())
        second = ServeProcess(
            serve.storage,
            tmp_path / "serve-postgres.log",
            db_url=db_url,
            orchestrator_base=tmp_path / "orchestrator",
            extra_env={"SNAPSHOT_CACHE_DIR": str(tmp_path / "snapshot-cache")},
        )
        second.start(timeout_s=300)
        try:
            # The storage's key file predates this database: serve added the key to it.
            assert second.env["E2B_API_KEY"] == serve.env["E2B_API_KEY"]
            for name, value in second.env.items():
                monkeypatch.setenv(name, value)
            made = Sandboxes("postgres")
            try:
                sandbox = made.create()
                assert sandbox.commands.run("echo on postgres").stdout == "on postgres\n"
                sandbox.files.write("/root/pg.txt", "kept in a snapshot PostgreSQL records")
                with psycopg.connect(db_url) as db:
                    rows = db.execute("SELECT sandbox_id FROM sandboxes").fetchall()
                    assert rows == [(sandbox.sandbox_id,)]
                assert sandbox.pause() is True
                assert made.listed() == {sandbox.sandbox_id: "paused"}
                with psycopg.connect(db_url) as db:
                    rows = db.execute("SELECT sandbox_id FROM snapshots").fetchall()
                    assert rows == [(sandbox.sandbox_id,)]
                # the session's serve (SQLite) knows nothing of it
                answer = http(
                    "GET",
                    f"{serve.env['E2B_API_URL']}/sandboxes/{sandbox.sandbox_id}",
                    headers={"X-API-Key": serve.env["E2B_API_KEY"]},
                )
                assert answer[0] == 404
                resumed = e2b.Sandbox.connect(sandbox.sandbox_id)
                assert resumed.files.read("/root/pg.txt") == "kept in a snapshot PostgreSQL records"
                assert resumed.kill() is True
                assert made.listed() == {}
            finally:
                made.cleanup()
        finally:
            code = second.stop()
            left = second.leftovers()
        assert code == 0, second.log_tail()
        assert left == [], left
    finally:
        postgres.close()


def test_a_restarted_serve_resumes_a_paused_sandbox(sandboxes: Sandboxes, serve: ServeProcess) -> None:
    """Near the end of the file: it stops the session's serve and starts it again on the same storage."""
    sandbox = sandboxes.create()
    sandbox.files.write("/root/restart.txt", "across a restart")
    before = start_counter(sandbox)
    assert sandbox.pause() is True
    code, left = serve.restart()
    assert code == 0, serve.log_tail()
    assert left == [], left
    assert sandboxes.listed() == {sandbox.sandbox_id: "paused"}
    resumed = e2b.Sandbox.connect(sandbox.sandbox_id)
    assert resumed.files.read("/root/restart.txt") == "across a restart"
    counter_advances(resumed, before)
    assert sandboxes.listed() == {sandbox.sandbox_id: "running"}


def test_a_serve_killed_with_sigkill_comes_back_with_its_paused_sandbox_and_no_orphan(
    sandboxes: Sandboxes, serve: ServeProcess
) -> None:
    """A crash, not a stop: SIGKILL with one sandbox running and one paused. Its QEMUs go with it
    (their owners die in turn); the next start reclaims the workspaces they left, the API forgets
    the sandbox that died with the node, and the paused one resumes with its file and process."""
    running = sandboxes.create()
    paused = sandboxes.create()
    paused.files.write("/root/crash.txt", "across a crash")
    before = start_counter(paused)
    assert paused.pause() is True
    assert sandboxes.listed() == {running.sandbox_id: "running", paused.sandbox_id: "paused"}

    marker = f"{serve.workspace_root}/"
    qemus = [pid for pid, cmd in qemu_processes() if marker in cmd]
    assert qemus, "the running sandbox has no QEMU"
    serve.kill()

    def all_gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() for pid in qemus)

    wait_until(all_gone, 30, "the dead serve's QEMUs to exit")
    left = [item for item in serve.leftovers() if item.startswith("workspace")]
    assert left, "a crash leaves the running sandbox's workspace for the next start to reclaim"
    serve.start()
    assert serve.leftovers() == [], "the restart did not reclaim what the crash left"
    assert sandboxes.listed() == {paused.sandbox_id: "paused"}
    with pytest.raises(e2b.NotFoundException):
        e2b.Sandbox.connect(running.sandbox_id)
    resumed = e2b.Sandbox.connect(paused.sandbox_id)
    assert resumed.files.read("/root/crash.txt") == "across a crash"
    counter_advances(resumed, before)

"""Hardening, one test per item, each with its reproduction: what a user (or an attacker in a guest) does.

One create-build (module fixture, a counter left running by its start command, as in
``test_resume_chain``) and one pause on top of it make the two complete builds every test
reuses. Every check is about this module's own builds, sandbox ids, slots and workspaces:
other sandboxes may run on the host at the same time.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from sandbox_traces import (
    Finished,
    Proc,
    Run,
    descendants,
    ember_env,
    run_ember,
    wait_all_gone,
    wait_slots_released,
)

from ember.network import EgressPolicy, update_egress
from ember.network.links import default_gateway_interface
from ember.sandbox import Node, ResumeOptions, Sandbox

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
from network_guests import egress_peer, link_addresses

pytestmark = [
    pytest.mark.vm,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes need root for network namespaces and mounts"),
]

COUNTER = (
    "nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.new;"
    " mv /tmp/counter.new /tmp/counter; sleep 0.2; done' >/dev/null 2>&1 &"
)
READ_COUNTER = "cat /tmp/counter"


@dataclass(frozen=True)
class Builds:
    storage: Path
    parent: uuid.UUID
    """Created by create-build, with the counter running."""
    other: uuid.UUID
    """Paused from ``parent``: a second complete build."""

    @property
    def base_path(self) -> Path:
        return self.storage / "orchestrator"

    def folder(self, build: uuid.UUID) -> Path:
        return self.storage / "templates" / str(build)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    storage = tmp_path_factory.mktemp("hardening") / "store"
    parent, other = uuid.uuid4(), uuid.uuid4()
    created = run_ember(
        "create-build", "-to-build", str(parent), "-storage", str(storage), "-hugepages=false",
        "-memory", "512", "-disk", "512", "-start-cmd", COUNTER, "-ready-cmd", "test -s /tmp/counter",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr + created.stdout
    paused = _resume(storage, parent, "-to-build", str(other), "-pause")
    assert paused.returncode == 0, paused.stderr + paused.stdout
    return Builds(storage, parent, other)


def _resume(storage: Path, build: uuid.UUID, *args: str, **env: str) -> Finished:
    return run_ember(
        "resume-build", "-from-build", str(build), "-storage", str(storage), *args, env=ember_env(**env)
    )


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _assert_the_next_command_reclaims(builds: Builds, run: Run) -> None:
    """What a killed command left (its workspace at least) is reclaimed by the next one, and said so."""
    assert run.workspaces(), "nothing was left to reclaim: the test would prove nothing"
    after = _resume(builds.storage, builds.parent, "-cmd", "true")
    assert after.returncode == 0, after.stderr
    reclaimed = re.search(r"Reclaimed what killed sandboxes left: (\d+) workspaces", after.stdout)
    assert reclaimed and int(reclaimed.group(1)) >= 1, after.stdout
    run.assert_gone(within_s=2)


def _error_line(result: Finished) -> str:
    """The command's stderr, which must be exactly one line (no traceback, no log lines)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "internal error" not in lines[0] and "Traceback" not in lines[0]
    return lines[0]


def _assert_resumes_counting(builds: Builds, build: uuid.UUID) -> None:
    result = _resume(builds.storage, build, "-cmd", READ_COUNTER)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\d+$", result.stdout, re.M), result.stdout


# -- a. a pause never writes into an existing build --------------------------------------------


def test_a_pause_into_an_existing_build_is_refused_and_changes_no_byte(builds: Builds) -> None:
    """Reproduction: ``resume-build -from-build P -pause -to-build P`` (and ``-to-build Q``, complete).

    The old main resumed and paused anyway, writing the new diff's objects over P's (or Q's).
    """
    before = {build: _digests(builds.folder(build)) for build in (builds.parent, builds.other)}
    for target in (builds.parent, builds.other):
        result = _resume(builds.storage, builds.parent, "-pause", "-to-build", str(target))
        assert result.returncode != 0
        line = _error_line(result)
        assert f"build {target}" in line and "already exists" in line, line
        assert "Running" not in result.stdout, "a sandbox ran although its pause could not be stored"
    assert {build: _digests(builds.folder(build)) for build in before} == before
    for build in before:
        _assert_resumes_counting(builds, build)


# -- b. one writer per build id ----------------------------------------------------------------


def test_of_two_concurrent_pauses_into_one_build_exactly_one_succeeds(builds: Builds) -> None:
    """Reproduction: two ``resume-build -from-build P -pause -to-build X`` started together.

    The old main ran both: each wrote X's objects, and the build was a mix of two pauses.
    """
    target = uuid.uuid4()
    argv = [sys.executable, "-m", "ember", "resume-build", "-from-build", str(builds.parent),
            "-storage", str(builds.storage), "-pause", "-to-build", str(target)]  # fmt: skip
    processes = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ember_env())
        for _ in range(2)
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        results.append(Finished(process.pid, process.returncode, out, err))
    succeeded = [result for result in results if result.returncode == 0]
    failed = [result for result in results if result.returncode != 0]
    assert len(succeeded) == 1 and len(failed) == 1, [r.stderr for r in results]
    assert f"✅ Build finished: {target}" in succeeded[0].stdout
    line = _error_line(failed[0])
    assert f"build {target}" in line and "claimed by another writer" in line, line
    _assert_resumes_counting(builds, target)


# -- c. killing a pause at any point ----------------------------------------------------------


def _read_until(process: subprocess.Popen[str], marker: str, seen: list[str], timeout_s: float = 120) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while not seen or marker not in seen[-1]:
        assert time.monotonic() < deadline and process.poll() is None, f"no {marker!r} in:\n{''.join(seen)}"
        seen.append(process.stdout.readline())


def _kill_during_pause(builds: Builds, sig: signal.Signals, point: str | float) -> None:
    """Resume the parent with -signal-pause, start the pause, send ``sig`` at ``point``, check the aftermath.

    ``point``: ``"now"`` (right after SIGUSR1), ``"paused"`` (the VM's vCPUs stopped),
    ``"exported"`` (diffs written, upload next; needs -v), or a delay after SIGUSR1 in seconds.
    """
    target = uuid.uuid4()
    parent_before = _digests(builds.folder(builds.parent))
    argv = [sys.executable, "-m", "ember", "resume-build", "-from-build", str(builds.parent),
            "-to-build", str(target), "-storage", str(builds.storage),
            "-signal-pause", "SIGUSR1"]  # fmt: skip
    if point == "exported":
        argv.append("-v")
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ember_env()
    )
    seen: list[str] = []
    _read_until(process, "Waiting for SIGUSR1", seen)
    run = Run.from_output("".join(seen), process.pid, builds.base_path)
    started = descendants(process.pid)
    assert run.processes(), "no QEMU named after the printed sandbox id"
    process.send_signal(signal.SIGUSR1)
    if point == "paused":
        _read_until(process, "Paused", seen)
    elif point == "exported":
        _read_until(process, "[exported]", seen)
    elif isinstance(point, float):
        time.sleep(point)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    # No process of the run survives it, and none hangs in D state on a dead FUSE server.
    wait_all_gone(started)
    assert _digests(builds.folder(builds.parent)) == parent_before
    completed = (builds.folder(target) / "metadata.json").exists()
    reported = f"✅ Build finished: {target}" in out
    if point in ("now", "paused"):
        assert not completed, "metadata.json was stored although the pause was cut short"
    if completed and not reported:
        # Only a dead owner cannot report a build its sandbox process had just stored.
        assert sig is signal.SIGKILL, f"the command said it failed, yet {target} is a build:\n{out}{err}"
    if sig is signal.SIGTERM and not reported:
        assert process.returncode == 143, out + err
        assert "terminated by SIGTERM" in err.strip().splitlines()[-1], err
        run.assert_gone(within_s=5)  # an orderly stop releases everything itself
    elif sig is signal.SIGKILL and not reported:
        assert process.returncode == -signal.SIGKILL
    # The next ember command (any) reclaims whatever the signalled one left.
    after = _resume(builds.storage, builds.parent, "-cmd", "true")
    assert after.returncode == 0, after.stderr
    run.assert_gone(within_s=5)
    if completed:  # a pause that finished is a whole build
        _assert_resumes_counting(builds, target)


@pytest.mark.parametrize("point", ["now", "paused", "exported"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_pause_killed_at_a_milestone_leaves_the_parent_intact_and_nothing_behind(
    builds: Builds, sig: signal.Signals, point: str
) -> None:
    """Reproduction: ``kill -KILL`` / ``kill -TERM`` resume-build during ``-signal-pause``'s pause.

    The old main's sandbox ran inside the command: a SIGKILL left its working directory for
    good, and SIGTERM ended the command without stopping the sandbox in order.
    """
    _kill_during_pause(builds, sig, point)


@pytest.mark.parametrize("delay_s", [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.6])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_pause_killed_after_fixed_delays_leaves_the_parent_intact_and_nothing_behind(
    builds: Builds, sig: signal.Signals, delay_s: float
) -> None:
    """With the three milestones, ten points of a pause per signal (issue 8 asks for ten).

    Here a pause of these builds takes ~0.25-0.4 s from SIGUSR1 ("Paused" at ~0.15 s, the
    diffs exported at ~0.25 s), slower on a loaded host: the delays are spread over it, and
    the last one falls in the teardown after the build is reported.
    """
    _kill_during_pause(builds, sig, delay_s)


# -- d. envd answers only the sandbox's owner; e. private workspaces and builds -----------------


@dataclass(frozen=True)
class Interactive:
    process: subprocess.Popen[str]
    run: Run
    host: str
    token: str


@pytest.fixture
def interactive(builds: Builds) -> Iterator[Interactive]:
    """resume-build in interactive mode, as a user starts it; stopped with Ctrl+C afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ember", "resume-build", "-from-build", str(builds.parent),
         "-storage", str(builds.storage)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ember_env(),
    )  # fmt: skip
    try:
        seen: list[str] = []
        _read_until(process, "Press Ctrl+C", seen)
        output = "".join(seen)
        address = re.search(r"envd: http://([\d.]+):49983", output)
        token = re.search(r"envd access token: (\S+)", output)
        assert address and token, output
        yield Interactive(
            process, Run.from_output(output, process.pid, builds.base_path), address.group(1), token.group(1)
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)


def _request(
    host: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(host, 49983, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _upload(name: str) -> tuple[bytes, dict[str, str]]:
    boundary = "ember-test-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\nhello\r\n--{boundary}--\r\n"
    ).encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_envd_refuses_every_request_without_the_sandboxs_token(interactive: Interactive) -> None:
    """Reproduction: from anywhere that reaches the slot's address, call envd without the token.

    The old main set no token at all: GET /envs, POST /files and Process/List answered anyone,
    and whoever sent the first /init could set one and lock the owner out.
    """
    host, token = interactive.host, interactive.token
    upload, upload_headers = _upload("/root/probe.txt")
    rpc_headers = {"Content-Type": "application/json", "Connect-Protocol-Version": "1"}
    calls = [
        ("GET", "/envs", b"", {}),
        ("POST", "/files?path=/root/probe.txt", upload, upload_headers),
        ("POST", "/process.Process/List", b"{}", rpc_headers),
    ]
    for method, path, body, headers in calls:
        assert _request(host, method, path, body, headers)[0] == 401, f"{method} {path} without a token"
        wrong = {**headers, "X-Access-Token": "not-the-token"}
        assert _request(host, method, path, body, wrong)[0] == 401, f"{method} {path} with a wrong token"
        right = {**headers, "X-Access-Token": token}
        assert _request(host, method, path, body, right)[0] == 200, f"{method} {path} with the token"
    status, body = _request(host, "GET", "/files?path=/root/probe.txt", headers={"X-Access-Token": token})
    assert (status, body) == (200, b"hello")

    # Taking the sandbox over: a second /init that sets another token without the current one.
    takeover = json.dumps({"accessToken": "attacker-token"}).encode()
    json_headers = {"Content-Type": "application/json"}
    assert _request(host, "POST", "/init", takeover, json_headers)[0] == 401
    assert _request(host, "POST", "/init", takeover, {**json_headers, "X-Access-Token": "guess"})[0] == 401
    assert _request(host, "GET", "/envs", headers={"X-Access-Token": "attacker-token"})[0] == 401
    assert _request(host, "GET", "/envs", headers={"X-Access-Token": token})[0] == 200


def test_workspaces_and_stored_builds_are_private_to_root(builds: Builds, interactive: Interactive) -> None:
    """Reproduction: ``ls -l`` a build folder and a running sandbox's working directories.

    The old main stored objects 0644 in 0755 folders: any local user could read guest memory.
    """
    for build in (builds.parent, builds.other):
        folder = builds.folder(build)
        assert folder.stat().st_mode & 0o777 == 0o700, folder
        assert (builds.storage / "templates").stat().st_mode & 0o777 == 0o700
        for item in folder.iterdir():
            assert item.stat().st_mode & 0o777 == 0o600, item
    run = interactive.run
    for directory in [*run.workspaces(), *run.socket_dirs()]:
        assert directory.stat().st_mode & 0o777 == 0o700, directory
    assert run.workspaces() and run.socket_dirs()


# -- f. what a killed command left is reclaimed by the next one --------------------------------


def test_the_next_command_reclaims_what_a_killed_interactive_run_left(
    builds: Builds, interactive: Interactive
) -> None:
    """Reproduction: ``kill -9`` an interactive resume-build, then run any resume-build.

    The old main left the killed run's ``sandbox/resume-*`` directory (with its COW caches)
    forever, and printed nothing about it.
    """
    run = interactive.run
    assert run.workspaces() and run.socket_dirs() and run.mounts(), "the running sandbox has no FUSE mount"
    started = descendants(interactive.process.pid)
    interactive.process.kill()
    interactive.process.wait(30)
    wait_all_gone(started)
    _assert_the_next_command_reclaims(builds, run)


# -- g. a full disk ends the command with its reason -------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=150m,mode=0700", "tmpfs", str(mount_point)], check=True
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_guest_filling_the_hosts_disk_ends_the_command_with_one_line_naming_it(
    builds: Builds, small_disk: Path
) -> None:
    """Reproduction: ORCHESTRATOR_BASE_PATH on a 150 MiB disk; the guest writes 300 MiB.

    The old main never returned: the guest's writes failed and retried while the command
    waited for it, and the sandbox's process logged every failed write.
    """
    started = time.monotonic()
    result = _resume(
        builds.storage,
        builds.parent,
        "-cmd",
        "dd if=/dev/urandom of=/root/big bs=1M count=300 && sync",
        ORCHESTRATOR_BASE_PATH=str(small_disk),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    line = _error_line(result)
    assert "No space left on device" in line and str(small_disk) in line, line
    assert time.monotonic() - started < 120
    Run.from_output(result.stdout, result.pid, small_disk).assert_gone(within_s=2)
    mounted = [
        point for point in Path("/proc/self/mountinfo").read_text().split() if str(small_disk) + "/" in point
    ]
    assert mounted == []


# -- h. unusable places are refused in one line ------------------------------------------------


def test_storage_that_is_a_regular_file_is_refused_in_one_line(builds: Builds, tmp_path: Path) -> None:
    """Reproduction: ``resume-build -storage <a file>``; the old main failed with an internal error."""
    afile = tmp_path / "not-a-directory"
    afile.write_text("x")
    result = _resume(afile, builds.parent, "-cmd", "true")
    assert result.returncode == 1
    assert "is a file, not a directory" in _error_line(result)


def test_a_read_only_orchestrator_base_path_is_refused_in_one_line(builds: Builds, tmp_path: Path) -> None:
    """Reproduction: ORCHESTRATOR_BASE_PATH on a read-only file system; the old main: internal error."""
    read_only = tmp_path / "ro"
    read_only.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)], check=True)
    try:
        result = _resume(builds.storage, builds.parent, "-cmd", "true", ORCHESTRATOR_BASE_PATH=str(read_only))
    finally:
        subprocess.run(["umount", "-l", str(read_only)], check=False)
    assert result.returncode == 1
    line = _error_line(result)
    assert "Read-only file system" in line and "ORCHESTRATOR_BASE_PATH" in line, line


# -- i. a guest reaches the internet, nothing of the host ------------------------------------

GUEST_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("connected")
except OSError as exc:
    print(type(exc).__name__)
"""


def _guest_connects(sandbox: Sandbox, address: IPv4Address | str, port: int) -> str:
    result = sandbox.envd.run_program("/usr/bin/python3", ["-c", GUEST_CONNECT, str(address), str(port)])
    assert result.exit_code == 0, result.stderr
    return result.stdout.decode().strip()


def test_a_guest_reaches_no_host_service_no_metadata_no_other_sandbox(
    builds: Builds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reproduction: from inside a guest, connect to the host, 169.254.169.254 and another sandbox.

    The old main installed NAT only: a guest reached every host service on the slot's veth
    address and the host's own address, and every other sandbox's envd.
    """
    monkeypatch.setenv("HOST_KERNELS_DIR", ember_env()["HOST_KERNELS_DIR"])
    private = IPv4Network("192.168.251.0/30")
    with (
        socket.create_server(("0.0.0.0", 0)) as host_service,
        Node(str(builds.storage)) as node,
        Sandbox.resume(node, ResumeOptions(builds.parent)) as sandbox,
        Sandbox.resume(node, ResumeOptions(builds.other)) as neighbour,
    ):
        port = host_service.getsockname()[1]
        slot = sandbox.slot
        host_addresses = [slot.veth_ip]
        gateway = default_gateway_interface()
        if gateway is not None:
            host_addresses += link_addresses(gateway)
        for address in host_addresses:
            socket.create_connection((str(address), port), timeout=3).close()  # it does listen there
            assert _guest_connects(sandbox, address, port) != "connected", f"the guest reached {address}"
        assert _guest_connects(sandbox, "169.254.169.254", 80) != "connected"
        socket.create_connection((str(neighbour.slot.host_ip), 49983), timeout=3).close()
        assert _guest_connects(sandbox, neighbour.slot.host_ip, 49983) != "connected"

        with egress_peer(slot, [private], "peer", tmp_path) as peer:
            server = peer.addresses[0]
            assert _guest_connects(sandbox, server, peer.port) != "connected", "private ranges are denied"
            update_egress(slot, EgressPolicy.parse(allowed_cidrs=[str(private)]))
            assert _guest_connects(sandbox, server, peer.port) == "connected"


# -- j. a corrupt snapfile, a killed create-build, a read-only base path for create-build ------


def _run_watched(*args: str, env: dict[str, str]) -> tuple[Finished, list[Proc]]:
    """``python -m ember <args>`` to completion, with every process seen below it while it ran.

    A command that fails before printing its sandbox id leaves nothing else to find its
    processes and slot owner records by.
    """
    argv = [sys.executable, "-m", "ember", *args]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen: dict[int, Proc] = {}
    with ThreadPoolExecutor(1) as pool:
        output = pool.submit(process.communicate, timeout=300)
        while not output.done():
            seen.update((proc.pid, proc) for proc in descendants(process.pid))
            time.sleep(0.05)
        out, err = output.result()
    return Finished(process.pid, process.returncode, out, err), list(seen.values())


def _assert_nothing_left_under(base_path: Path, processes: list[Proc]) -> None:
    """No workspace, mount or process under the command's own ORCHESTRATOR_BASE_PATH, no slot record of it."""
    wait_all_gone(processes)
    workspaces = base_path / "sandbox"
    assert not workspaces.exists() or list(workspaces.iterdir()) == []
    mounts = Path("/proc/self/mountinfo").read_text().split()
    assert [point for point in mounts if str(base_path) in point] == []
    wait_slots_released(proc.pid for proc in processes)


def test_a_truncated_snapfile_is_named_in_one_line_and_leaves_nothing(builds: Builds, tmp_path: Path) -> None:
    """Reproduction: copy a build, cut its snapfile in half (an upload cut short), resume the copy.

    The old main reported what QEMU's exit did to the control socket: "QMP ... Connection
    reset by peer", which names neither the snapfile nor what to do about it.
    """
    copy = tmp_path / "copy"
    copied = run_ember(
        "copy-build", "-build", str(builds.parent), "-from", str(builds.storage), "-to", str(copy)
    )
    assert copied.returncode == 0, copied.stderr
    snapfile = copy / "templates" / str(builds.parent) / "snapfile"
    os.truncate(snapfile, snapfile.stat().st_size // 2)
    result, processes = _run_watched(
        "resume-build", "-from-build", str(builds.parent), "-storage", str(copy), "-cmd", "true",
        env=ember_env(),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    line = _error_line(result)
    assert "snapfile" in line and "truncated or corrupt" in line, line
    assert "Connection reset by peer" not in line, line
    assert "Running" not in result.stdout
    _assert_nothing_left_under(copy / "orchestrator", processes)


def _slots_by_netns() -> dict[int, int]:
    """Network slot numbers by the inode of their namespace (``/run/netns/ns-<slot>``)."""
    return {os.stat(ns).st_ino: int(ns.name.removeprefix("ns-")) for ns in Path("/run/netns").glob("ns-*")}


def _booting_qemu(process: subprocess.Popen[str], timeout_s: float = 300) -> tuple[str, int, list[Proc]]:
    """Once a QEMU below ``process`` runs in its slot: its sandbox id, the slot, the processes below.

    create-build prints its sandbox id and slot only once the guest's envd answers, after
    the boot; while it boots, its QEMU's name and network namespace tell them.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        assert time.monotonic() < deadline and process.poll() is None, "create-build booted no QEMU"
        below = descendants(process.pid)
        for proc in below:
            try:
                argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
                netns = os.stat(f"/proc/{proc.pid}/ns/net").st_ino
            except OSError:
                continue
            slot = _slots_by_netns().get(netns)
            if b"qemu-system" in argv[0] and b"-name" in argv and slot is not None:
                return argv[argv.index(b"-name") + 1].decode().removeprefix("sandbox-"), slot, below
        time.sleep(0.1)


def test_a_create_build_killed_while_it_boots_leaves_no_build_and_the_next_command_reclaims_it(
    builds: Builds,
) -> None:
    """Reproduction: ``kill -9`` create-build while its VM boots, then run any ember command.

    The old main left the killed create's working directory (guest RAM file, COW cache,
    ~130-150 MB) and its socket directory for good; no later command removed them.
    """
    target = uuid.uuid4()
    process = subprocess.Popen(
        [sys.executable, "-m", "ember", "create-build", "-to-build", str(target),
         "-storage", str(builds.storage), "-hugepages=false", "-memory", "512", "-disk", "512",
         "-start-cmd", COUNTER, "-ready-cmd", "test -s /tmp/counter"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ember_env(),
    )  # fmt: skip
    try:
        sandbox_id, slot, started = _booting_qemu(process)
        run = Run(sandbox_id, slot, process.pid, builds.base_path, frozenset(proc.pid for proc in started))
        process.kill()
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    wait_all_gone(descendants(process.pid) + started)
    assert process.returncode == -signal.SIGKILL
    assert "running in network slot" not in out, f"the boot had ended: the kill came too late\n{out}"
    assert not (builds.folder(target) / "metadata.json").exists(), "a killed create left a complete build"
    _assert_the_next_command_reclaims(builds, run)
    refused = _resume(builds.storage, target, "-cmd", "true")
    assert refused.returncode == 1 and str(target) in _error_line(refused), refused.stdout + refused.stderr


def test_create_build_refuses_a_read_only_orchestrator_base_path_in_one_line(tmp_path: Path) -> None:
    """Reproduction: ``create-build`` with ORCHESTRATOR_BASE_PATH on a read-only file system.

    The old main failed with an internal error instead of naming the setting to fix.
    """
    read_only = tmp_path / "ro"
    read_only.mkdir()
    storage, target = tmp_path / "store", uuid.uuid4()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)], check=True)
    try:
        result = run_ember(
            "create-build", "-to-build", str(target), "-storage", str(storage), "-hugepages=false",
            "-memory", "512", "-disk", "512", env=ember_env(ORCHESTRATOR_BASE_PATH=str(read_only)),
        )  # fmt: skip
    finally:
        subprocess.run(["umount", "-l", str(read_only)], check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    line = _error_line(result)
    assert "Read-only file system" in line and "ORCHESTRATOR_BASE_PATH" in line, line
    folder = storage / "templates" / str(target)
    assert not folder.exists() or list(folder.iterdir()) == [], "the refused create kept its claim or objects"

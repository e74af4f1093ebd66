"""``reclaim_orphans`` on workspaces with dead, alive, partial and missing owner records (no mounts).

ORCHESTRATOR_BASE_PATH is ``tmp_path/base`` and TMPDIR ``tmp_path/tmp``, so only directories
made here are looked at. A process "still using" a dead owner's workspace is a ``sleep``
whose command line names the directory, as a VMM's names its files.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.environment import Environment
from ember.owner import OWNER_FILE, ProcessOwner, write_owner
from ember.sandbox import reclaim_orphans
from ember.sandbox.cleanup import SOCKET_DIR_PREFIX, UNOWNED_GRACE_S, create_workspace, remove_workspace


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Environment:
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    return Environment.resolve(None, {"ORCHESTRATOR_BASE_PATH": str(tmp_path / "base")})


def _dead_owner() -> ProcessOwner:
    """This process's pid with another start time: what a pid reused since its owner died looks like."""
    me = ProcessOwner.current()
    return ProcessOwner(me.pid, me.start_time + 1)


def _workspace(root: Path, name: str, owner: ProcessOwner | None, record: str | None = None) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "rootfs.cow").write_bytes(b"\0" * 4096)
    if record is not None:
        (directory / OWNER_FILE).write_text(record)
    elif owner is not None:
        write_owner(directory / OWNER_FILE, owner)
    return directory


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.fixture
def user_of() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def _use(directory: Path, started: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """A process whose command line names ``directory`` (``sh -c 'sleep 60' <dir>/disk``)."""
    process = subprocess.Popen(["sh", "-c", "sleep 60", str(directory / "disk")])
    started.append(process)
    return process


def test_only_workspaces_whose_owner_is_gone_are_removed_with_their_users(
    env: Environment, user_of: list[subprocess.Popen[bytes]]
) -> None:
    root = env.orchestrator_base_path / "sandbox"
    dead = _workspace(root, "aaaa-dead", _dead_owner())
    alive = _workspace(root, "bbbb-alive", ProcessOwner.current())
    partial = _workspace(root, "cccc-partial", None, record="12345")  # half written: who owns it is unknown
    young = _workspace(root, "dddd-unowned", None)  # being created right now
    old = _workspace(root, "eeee-unowned-old", None)
    _age(old, UNOWNED_GRACE_S + 5)
    dead_user, alive_user = _use(dead, user_of), _use(alive, user_of)

    found = reclaim_orphans(env)

    assert sorted(found.workspaces) == sorted([dead, old])
    assert not dead.exists() and not old.exists()
    assert alive.exists() and partial.exists() and young.exists()
    assert (alive / "rootfs.cow").exists()
    assert found.processes == [dead_user.pid]
    assert dead_user.wait(5) == -9
    assert alive_user.poll() is None, "a live owner's sandbox process was killed"
    assert found.count >= 3 and "2 workspaces" in found.summary()
    assert found.problems == []


def test_socket_directories_go_with_their_dead_owner_and_legacy_ones_when_nobody_listens(
    env: Environment,
) -> None:
    temp = Path(tempfile.gettempdir())
    dead = _workspace(temp, f"{SOCKET_DIR_PREFIX}dead", _dead_owner())
    alive = _workspace(temp, f"{SOCKET_DIR_PREFIX}alive", ProcessOwner.current())
    legacy_dead = _workspace(temp, "ember-nbd-old", None)
    legacy_live = _workspace(temp, "ember-qmp-live", None)
    unrelated = _workspace(temp, "someone-elses", _dead_owner())
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as deaf,
    ):
        listener.bind(str(legacy_live / "qmp.sock"))
        listener.listen()
        deaf.bind(str(legacy_dead / "nbd.sock"))  # bound, never listening: its server died
        reclaim_orphans(env)
    assert not dead.exists() and not legacy_dead.exists()
    assert alive.exists() and legacy_live.exists() and unrelated.exists()


def test_legacy_scratch_directories_without_owner_go_once_old(env: Environment) -> None:
    root = env.orchestrator_base_path / "sandbox"
    old = _workspace(root, "resume-abc123", None)
    _age(old, UNOWNED_GRACE_S + 5)
    fresh = _workspace(root, "create-def456", None)
    found = reclaim_orphans(env)
    assert found.workspaces == [old]
    assert fresh.exists()


def test_a_missing_sandboxes_root_reclaims_nothing(env: Environment) -> None:
    found = reclaim_orphans(env)
    assert found.count == 0 and found.workspaces == []


def test_a_workspace_made_here_is_owned_by_this_process_private_and_removed_whole(env: Environment) -> None:
    workspace = create_workspace(env, "0123456789abcdef0123")
    for directory in (workspace.work_dir, workspace.socket_dir):
        assert directory.stat().st_mode & 0o777 == 0o700
        assert (directory / OWNER_FILE).read_text() == ProcessOwner.current().render()
    assert workspace.work_dir.name.startswith("0123456789abcdef0123-")
    assert workspace.socket_dir.parent == Path(tempfile.gettempdir())
    assert reclaim_orphans(env).workspaces == [], "a live owner's workspace was reclaimed"
    (workspace.work_dir / "vm").mkdir()
    (workspace.socket_dir / "rootfs.sock").write_bytes(b"")
    found = remove_workspace(workspace)
    assert found.workspaces == [workspace.work_dir]
    assert not workspace.work_dir.exists() and not workspace.socket_dir.exists()


def test_a_workspace_whose_owner_died_but_is_not_reaped_yet_is_reclaimed(env: Environment) -> None:
    """A zombie keeps its pid and start time until its parent reaps it; it owns nothing."""
    owner_process = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{owner_process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.01)
        stat = Path(f"/proc/{owner_process.pid}/stat").read_text()
        zombie = ProcessOwner(owner_process.pid, int(stat.rsplit(")", 1)[1].split()[19]))
        assert not zombie.alive()
        directory = _workspace(env.orchestrator_base_path / "sandbox", "ffff-zombie-owned", zombie)
        assert reclaim_orphans(env).workspaces == [directory]
        assert not directory.exists()
    finally:
        owner_process.wait()

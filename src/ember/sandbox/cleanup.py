"""Sandbox workspaces on the host, and reclaiming what killed processes left of them.

Each sandbox gets two directories, both with an owner record (``ember.owner``) naming the
process that owns the sandbox (the CLI command or the daemon)::

    ORCHESTRATOR_BASE_PATH/sandbox/<sandbox id>-XXXXXX/   COW caches, RAM file, memory mount,
                                                          VM run dir, pause scratch
    $TMPDIR/ember-sbx-XXXXXX/                            unix sockets (NBD, QMP, userfaultfd):
                                                          short paths, capped at 108 bytes

``reclaim_orphans`` runs when a node starts. For every workspace whose owner is gone it
ends what still uses it, in an order that cannot hang:

1. abort the FUSE connections mounted under it (fusectl ``abort``): a QEMU stuck in
   ``fuse_flush`` on a memory file whose server died is released at once;
2. SIGKILL any process still running from it (a VMM whose command line names it);
3. detach loop devices backed by files in it, unmount what is mounted under it (lazily);
4. remove both directories.

Workspaces of live owners are never touched, whatever else runs on the host; a directory
without an owner record is left alone until it is older than ``UNOWNED_GRACE_S`` (it may be
being created). The same steps (``remove_workspace``) end a sandbox whose process died.
Left-overs of older ember versions (``/tmp/ember-nbd-*``, ``/tmp/ember-qmp-*`` whose sockets
nobody listens on, ``sandbox/create-*`` and ``resume-*`` scratch directories) go too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ember.environment import Environment
from ember.memory import abort_fuse_connection
from ember.owner import OWNER_FILE, Liveness, owner_liveness, write_owner
from ember.sandbox.errors import SandboxError
from ember.sandbox.records import Workspace

_log = logging.getLogger(__name__)

SANDBOXES_DIR = "sandbox"
SOCKET_DIR_PREFIX = "ember-sbx-"
LEGACY_SOCKET_PREFIXES = ("ember-nbd-", "ember-qmp-")
LEGACY_WORK_PREFIXES = ("create-", "resume-")
UNOWNED_GRACE_S = 60.0
_KILL_WAIT_S = 5.0


@dataclass
class Reclaimed:
    """What a reclaim found and removed, for the log line a node prints at start."""

    workspaces: list[Path] = field(default_factory=list)
    fuse_connections: list[str] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    loop_devices: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return (
            len(self.workspaces) + len(self.fuse_connections) + len(self.processes) + len(self.loop_devices)
        )

    def summary(self) -> str:
        return (
            f"{len(self.workspaces)} workspaces, {len(self.fuse_connections)} FUSE connections aborted, "
            f"{len(self.processes)} processes killed, {len(self.loop_devices)} loop devices, "
            f"{len(self.mounts)} mounts, {len(self.slots)} network slots"
        )


def sandboxes_root(env: Environment) -> Path:
    return env.orchestrator_base_path / SANDBOXES_DIR


def create_workspace(env: Environment, sandbox_id: str) -> Workspace:
    """Both directories of a new sandbox, owned by this process; a clear error if the host refuses."""
    root = sandboxes_root(env)
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        work_dir = Path(tempfile.mkdtemp(prefix=f"{sandbox_id}-", dir=root))
        write_owner(work_dir / OWNER_FILE)
    except OSError as exc:
        raise SandboxError(
            f"cannot create the sandbox's working directory under {root}: {exc}; "
            "ORCHESTRATOR_BASE_PATH must be a writable directory with free space"
        ) from exc
    try:
        socket_dir = Path(tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX))
        write_owner(socket_dir / OWNER_FILE)
    except OSError as exc:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise SandboxError(
            f"cannot create the sandbox's socket directory in {tempfile.gettempdir()}: {exc}"
        ) from exc
    return Workspace(work_dir, socket_dir)


def remove_workspace(workspace: Workspace, report: Reclaimed | None = None) -> Reclaimed:
    """End whatever still uses the workspace (module docstring, steps 1-4) and remove it."""
    found = report if report is not None else Reclaimed()
    for directory in (workspace.work_dir, workspace.socket_dir):
        _release(directory, found)
    for directory in (workspace.work_dir, workspace.socket_dir):
        _remove_tree(directory, found)
    found.workspaces.append(workspace.work_dir)
    return found


def reclaim_orphans(env: Environment) -> Reclaimed:
    """Remove every workspace whose owner is gone, and what still used it (module docstring)."""
    found = Reclaimed()
    root = sandboxes_root(env)
    temp = Path(tempfile.gettempdir())
    for directory in _children(root):
        legacy = directory.name.startswith(LEGACY_WORK_PREFIXES) and not (directory / OWNER_FILE).exists()
        if (legacy and _older_than(directory, UNOWNED_GRACE_S)) or _orphaned(directory):
            _release(directory, found)
            _remove_tree(directory, found)
            found.workspaces.append(directory)
    for directory in _children(temp):
        if (directory.name.startswith(SOCKET_DIR_PREFIX) and _orphaned(directory)) or (
            directory.name.startswith(LEGACY_SOCKET_PREFIXES) and _sockets_dead(directory)
        ):
            _remove_tree(directory, found)
    if found.count:
        _log.info("reclaimed what killed sandboxes left: %s", found.summary())
    return found


def _children(directory: Path) -> list[Path]:
    try:
        return sorted(entry for entry in directory.iterdir() if entry.is_dir() and not entry.is_symlink())
    except OSError:
        return []


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def _orphaned(directory: Path) -> bool:
    owner = directory / OWNER_FILE
    if not owner.exists():
        return _older_than(directory, UNOWNED_GRACE_S)
    return owner_liveness(owner) is Liveness.GONE


def _sockets_dead(directory: Path) -> bool:
    """Whether no socket in ``directory`` has a listener (a live server would accept)."""
    for entry in directory.iterdir():
        if entry.is_socket():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(0.5)
                try:
                    probe.connect(str(entry))
                except OSError:
                    continue
                return False
    return True


@dataclass(frozen=True)
class _Mount:
    device: int
    mount_point: str
    fs_type: str


def _mounts_under(directory: Path) -> list[_Mount]:
    """Mounts at or below ``directory``, deepest first (from the mount table: no lookups)."""
    prefix = os.path.abspath(directory)
    found = []
    with open("/proc/self/mountinfo", "rb") as table:
        for line in table:
            fields = line.split()
            separator = fields.index(b"-")
            point = fields[4].decode(errors="replace").replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                major, _, minor = fields[2].partition(b":")
                fs_type = fields[separator + 1].decode(errors="replace")
                found.append(_Mount(os.makedev(int(major), int(minor)), point, fs_type))
    return sorted(found, key=lambda mount: mount.mount_point.count("/"), reverse=True)


def _release(directory: Path, found: Reclaimed) -> None:
    """Steps 1-3 of the module docstring for one directory."""
    mounts = _mounts_under(directory)
    for mount in mounts:
        if mount.fs_type.startswith("fuse"):
            problem = abort_fuse_connection(mount.device)
            if problem is None:
                found.fuse_connections.append(mount.mount_point)
            else:
                found.problems.append(problem)
    _kill_users(directory, found)
    _detach_loops(directory, found)
    for mount in mounts:
        done = subprocess.run(
            ["umount", "-l", mount.mount_point], capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            found.mounts.append(mount.mount_point)
        else:
            found.problems.append(f"umount {mount.mount_point}: {done.stderr.strip()}")


def _kill_users(directory: Path, found: Reclaimed) -> None:
    """SIGKILL processes whose command line names ``directory`` (a VMM of a dead sandbox)."""
    needle = os.fsencode(os.path.abspath(directory))
    me = os.getpid()
    victims = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
                victims.append(int(entry.name))
    deadline = time.monotonic() + _KILL_WAIT_S
    for pid in victims:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    found.processes += victims


def _detach_loops(directory: Path, found: Reclaimed) -> None:
    prefix = os.path.abspath(directory) + "/"
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            target = backing.read_text().strip()
        except OSError:
            continue
        if target.startswith(prefix):
            device = f"/dev/{backing.parent.parent.name}"
            done = subprocess.run(["losetup", "-d", device], capture_output=True, text=True, check=False)
            if done.returncode == 0:
                found.loop_devices.append(device)
            else:
                found.problems.append(f"losetup -d {device}: {done.stderr.strip()}")


def _remove_tree(directory: Path, found: Reclaimed) -> None:
    try:
        shutil.rmtree(directory)
    except FileNotFoundError:
        return
    except OSError as exc:
        found.problems.append(f"cannot remove {directory}: {exc}")

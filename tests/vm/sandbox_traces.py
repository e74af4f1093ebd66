"""What one ember command's sandbox left on the host, found by that sandbox's own identity.

A VM test must never assert that the host as a whole is clean: other sandboxes (another
engineer's tests, a daemon) may run at the same time. So every check here starts from what
identifies *this* run: the sandbox id the command printed (its QEMU is named
``sandbox-<id>``, its working directory is ``<ORCHESTRATOR_BASE_PATH>/sandbox/<id>-*``), the
network slot it printed, the command's pid (written in the owner records of its slot and of
its socket directory ``$TMPDIR/ember-sbx-*``), and the processes it started.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ember.guest import cache_dir

SLOT_OWNERS = Path("/run/ember/slots")
CREATE_STARTED = re.compile(r"Sandbox ([0-9a-f]+) running in network slot (\d+)")
RESUME_STARTED = re.compile(r"sandbox ([0-9a-f]+) in network slot (\d+)")


def ember_env(**extra: str) -> dict[str, str]:
    """The environment every ember command of the VM tests runs with (shared kernel cache)."""
    return {**os.environ, "HOST_KERNELS_DIR": str(cache_dir() / "kernels"), **extra}


@dataclass(frozen=True)
class Finished:
    """An ember command that ended: what it printed, and the pid it ran as."""

    pid: int
    returncode: int
    stdout: str
    stderr: str


def run_ember(*args: str, env: dict[str, str] | None = None, timeout_s: float = 600) -> Finished:
    """``python -m ember <args>`` to completion (its pid kept, unlike ``subprocess.run``)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ember", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or ember_env(),
    )
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"ember {' '.join(args)} did not finish in {timeout_s:.0f} s:\n{err}") from None
    return Finished(process.pid, process.returncode, out, err)


@dataclass(frozen=True)
class Run:
    """One ember command's sandbox, by what identifies it on the host."""

    sandbox_id: str
    slot: int
    owner_pid: int
    base_path: Path
    """The command's ORCHESTRATOR_BASE_PATH (``<storage>/orchestrator`` in local mode)."""
    helper_pids: frozenset[int] = frozenset()
    """Processes of the command seen while it ran (its slot keeper writes the slot's owner record)."""

    @classmethod
    def from_output(cls, output: str, owner_pid: int, base_path: Path) -> Run:
        found = CREATE_STARTED.search(output) or RESUME_STARTED.search(output)
        assert found, f"the command printed no sandbox id and slot:\n{output}"
        helpers = frozenset(proc.pid for proc in descendants(owner_pid))
        return cls(found.group(1), int(found.group(2)), owner_pid, base_path, helpers)

    def workspaces(self) -> list[Path]:
        return sorted((self.base_path / "sandbox").glob(f"{self.sandbox_id}-*"))

    def socket_dirs(self) -> list[Path]:
        """``$TMPDIR/ember-sbx-*`` directories whose owner record names the command's pid."""
        found = []
        for directory in Path(tempfile.gettempdir()).glob("ember-sbx-*"):
            if _owner_pid(directory / ".owner") == self.owner_pid:
                found.append(directory)
        return found

    def processes(self) -> list[int]:
        """Processes whose command line names the sandbox (its QEMU) or its workspace."""
        needles = [f"sandbox-{self.sandbox_id}".encode(), f"/sandbox/{self.sandbox_id}-".encode()]
        return [pid for pid, cmdline in _cmdlines() if any(needle in cmdline for needle in needles)]

    def mounts(self) -> list[str]:
        prefix = f"{self.base_path}/sandbox/{self.sandbox_id}-"
        return [point for point in _mount_points() if point.startswith(prefix)]

    def loop_devices(self) -> list[str]:
        prefix = f"{self.base_path}/sandbox/{self.sandbox_id}-"
        found = []
        for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
            try:
                if backing.read_text().strip().startswith(prefix):
                    found.append(backing.parent.parent.name)
            except OSError:
                continue
        return found

    def slot_held(self) -> bool:
        """Whether the slot's owner record names the command or a dead process: never released.

        A released slot has no record; another live sandbox's record names a live process.
        """
        owner = _owner_pid(SLOT_OWNERS / str(self.slot))
        if owner is None:
            return False
        return owner == self.owner_pid or owner in self.helper_pids or not Path(f"/proc/{owner}").exists()

    def leftovers(self) -> list[str]:
        """Everything of this run still on the host (empty when it was all released)."""
        left = [f"process {pid}" for pid in self.processes()]
        left += [f"workspace {path}" for path in self.workspaces()]
        left += [f"socket dir {path}" for path in self.socket_dirs()]
        left += [f"mount {point}" for point in self.mounts()]
        left += [f"loop device {name}" for name in self.loop_devices()]
        if self.slot_held():
            left.append(f"network slot {self.slot} (ns-{self.slot})")
        return left

    def assert_gone(self, within_s: float = 20.0) -> None:
        deadline = time.monotonic() + within_s
        while left := self.leftovers():
            assert time.monotonic() < deadline, f"left behind by sandbox {self.sandbox_id}: {left}"
            time.sleep(0.2)


def slots_owned_by(pids: Iterable[int]) -> list[str]:
    """The network slots whose owner record names one of ``pids`` (e.g. a node's processes)."""
    wanted = set(pids)
    owned = []
    for entry in sorted(SLOT_OWNERS.glob("[0-9]*")):
        owner = _owner_pid(entry) if entry.name.isdigit() else None
        if owner in wanted:
            owned.append(f"slot {entry.name} (owner record: pid {owner})")
    return owned


def wait_slots_released(pids: Iterable[int], within_s: float = 10.0) -> None:
    """No slot is owned by ``pids`` within ``within_s`` (a node may let go of a slot in the background)."""
    wanted = list(pids)
    deadline = time.monotonic() + within_s
    while held := slots_owned_by(wanted):
        assert time.monotonic() < deadline, f"network slots still held: {held}"
        time.sleep(0.1)


def _owner_pid(path: Path) -> int | None:
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    return int(fields[0]) if fields and fields[0].isdigit() else None


def _cmdlines() -> Iterable[tuple[int, bytes]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / "cmdline").read_bytes()
            except OSError:
                continue


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as table:
        return [line.split()[4].replace("\\040", " ") for line in table]


@dataclass(frozen=True)
class Proc:
    """A process, identified with its start time so a reused pid is not mistaken for it."""

    pid: int
    start_time: str

    def state(self) -> str | None:
        """Its state letter (``R``, ``S``, ``D``, ``Z``...), or None once it is gone."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        return fields[0] if fields[19] == self.start_time else None

    def describe(self) -> str:
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
        except OSError:
            cmdline = b"?"
        return f"{self.pid} ({self.state()}) {cmdline.decode(errors='replace')}"


def descendants(pid: int) -> list[Proc]:
    """``pid`` and every process below it, now."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        started[int(entry.name)] = fields[19]
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        if current in started:
            found.append(Proc(current, started[current]))
        todo += children.get(current, [])
    return found


def wait_all_gone(processes: Sequence[Proc], within_s: float = 20.0) -> None:
    """Every process in ``processes`` exits, and is reaped, within ``within_s``.

    A process stuck in D state (uninterruptible: a QEMU waiting on a FUSE server that died)
    never exits, and its state is in the failure message. Reaped, not just a zombie: ember's
    owner records still count a zombie as a live owner, and this host's init reaps orphans
    only every ~2 s, so a next command started at once would see the dead run as alive.
    """
    deadline = time.monotonic() + within_s
    while alive := [proc for proc in processes if proc.state() is not None]:
        if time.monotonic() > deadline:
            raise AssertionError(
                "processes of the killed run still exist: " + "; ".join(p.describe() for p in alive)
            )
        time.sleep(0.1)

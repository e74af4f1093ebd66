"""The processes of one ember owner (a CLI command, the daemon, a bench process), by role, and what
each costs: memory from ``/proc/<pid>/smaps_rollup``, threads, file descriptors.

An owner's tree, since sandboxes run in processes of their own (``ember.sandbox.worker``)::

    owner                      the command / daemon / bench process (``Node`` lives here)
    ├── resource_tracker       multiprocessing's (exec'd: its cmdline says so)
    └── forkserver             multiprocessing's fork server (cmdline ``multiprocessing.forkserver``)
        ├── slot keeper        forked first by a node (``ember.sandbox.slots``)
        ├── sandbox process    one per sandbox, plus the idle ones forked ahead
        │   ├── qemu-system-*  the guest's VMM: not an ember process
        │   └── helpers        short-lived children (sync, prefetch fill, fusermount3)
        └── ...

The keeper is told apart from the sandbox processes as the fork server's *oldest* child, which
holds for an owner with one ``Node`` (the daemon, a CLI command); an owner with several nodes
finds a sandbox's process as the parent of its QEMU (``sandbox_process``) instead.

Memory of an ember process is ``Pss_Anon + Pss_Shmem``: what the process itself allocated, with
pages shared copy-on-write with the fork server (the imported code's heap) divided among their
sharers, so a sum over the tree counts each page once. File-backed pages (libraries, the build's
data mapped by layered reads) are page cache and left out; ``Rss`` and ``Pss`` are kept for context.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("owner", "tracker", "forkserver", "keeper", "sandbox", "helper", "qemu")
EMBER_ROLES = ("owner", "tracker", "forkserver", "keeper", "sandbox", "helper")


@dataclass(frozen=True)
class Usage:
    """One process (or a sum): KiB from smaps_rollup, threads, open file descriptors."""

    rss: int = 0
    pss: int = 0
    pss_anon: int = 0
    pss_shmem: int = 0
    anonymous: int = 0
    threads: int = 0
    fds: int = 0
    processes: int = 0

    @property
    def own_kib(self) -> int:
        """``Pss_Anon + Pss_Shmem``: the process's own memory (module docstring)."""
        return self.pss_anon + self.pss_shmem

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(a + b for a, b in zip(_values(self), _values(other), strict=True)))


def _values(usage: Usage) -> tuple[int, ...]:
    return (
        usage.rss,
        usage.pss,
        usage.pss_anon,
        usage.pss_shmem,
        usage.anonymous,
        usage.threads,
        usage.fds,
        usage.processes,
    )


def usage_of(pid: int, *, with_fds: bool = True) -> Usage | None:
    """The process's ``Usage``, or None if it exited while being read."""
    try:
        rollup: dict[str, int] = {}
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, value = line.split(":", 1)
            rollup[name] = int(value.split()[0])
        threads = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd")) if with_fds else 0
    except (OSError, ValueError):
        return None
    return Usage(
        rss=rollup.get("Rss", 0),
        pss=rollup.get("Pss", 0),
        pss_anon=rollup.get("Pss_Anon", 0),
        pss_shmem=rollup.get("Pss_Shmem", 0),
        anonymous=rollup.get("Anonymous", 0),
        threads=threads,
        fds=fds,
        processes=1,
    )


def total(pids: Iterable[int], *, with_fds: bool = True) -> Usage:
    found = Usage()
    for pid in pids:
        usage = usage_of(pid, with_fds=with_fds)
        if usage is not None:
            found = found + usage
    return found


@dataclass(frozen=True)
class _Entry:
    pid: int
    ppid: int
    start: int
    cmdline: bytes
    exe: str


def _entries() -> dict[int, _Entry]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        try:
            exe = os.readlink(entry / "exe")
        except OSError:
            exe = ""
        pid = int(entry.name)
        found[pid] = _Entry(pid, int(fields[1]), int(fields[19]), cmdline, exe)
    return found


@dataclass
class Tree:
    """An owner's processes now, by role (``ROLES``)."""

    root: int
    roles: dict[str, list[int]] = field(default_factory=lambda: {role: [] for role in ROLES})
    parents: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, root: int) -> Tree:
        entries = _entries()
        children: dict[int, list[int]] = {}
        for known in entries.values():
            children.setdefault(known.ppid, []).append(known.pid)
        tree = cls(root)
        todo = [root]
        forkservers: set[int] = set()
        while todo:
            pid = todo.pop()
            entry = entries.get(pid)
            if entry is None:
                continue
            tree.parents[pid] = entry.ppid
            todo += children.get(pid, [])
            if pid == root:
                role = "owner"
            elif os.path.basename(entry.exe).startswith("qemu-system"):
                role = "qemu"
            elif entry.ppid == root and b"multiprocessing.forkserver" in entry.cmdline:
                role = "forkserver"
                forkservers.add(pid)
            elif entry.ppid == root and b"resource_tracker" in entry.cmdline:
                role = "tracker"
            else:
                role = "helper"
            tree.roles[role].append(pid)
        for server in forkservers:
            forked = sorted(
                (entries[pid].start, pid) for pid in children.get(server, []) if pid in tree.parents
            )
            for position, (_, pid) in enumerate(forked):
                tree.roles["helper"].remove(pid)
                tree.roles["keeper" if position == 0 else "sandbox"].append(pid)
        return tree

    def ember(self) -> list[int]:
        """Every process of the tree but the VMMs."""
        return [pid for role in EMBER_ROLES for pid in self.roles[role]]

    def running_sandboxes(self) -> list[int]:
        """Sandbox processes with a QEMU child (the others wait in the pool)."""
        with_vm = {self.parents.get(pid) for pid in self.roles["qemu"]}
        return [pid for pid in self.roles["sandbox"] if pid in with_vm]

    def idle_sandboxes(self) -> list[int]:
        running = set(self.running_sandboxes())
        return [pid for pid in self.roles["sandbox"] if pid not in running]


def sandbox_process(sandbox_id: str) -> tuple[int, int] | None:
    """(sandbox process, its QEMU) of a running sandbox, found by QEMU's ``-name sandbox-<id>``."""
    needle = f"sandbox-{sandbox_id}".encode()
    for entry in _entries().values():
        if needle in entry.cmdline and os.path.basename(entry.exe).startswith("qemu-system"):
            return entry.ppid, entry.pid
    return None


def mib(kib: float) -> float:
    return kib / 1024

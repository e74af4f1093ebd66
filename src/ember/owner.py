"""Who owns a host resource, so that what a killed process left behind can be told from what a live one uses.

ember leaves state outside its process: network slots, sandbox working directories, socket
directories, claimed builds. Each carries an owner record naming the process that made it::

    <pid> <start time in clock ticks since boot>

The start time (``/proc/<pid>/stat`` field 22) makes the record unambiguous: a pid reused by
an unrelated process has another start time, so its owner is rightly seen as gone. Records
are written to a temporary sibling and renamed into place, so a concurrent reader never sees
half a record; a record that cannot be parsed is treated as *unknown* (kept), never as a
dead owner, because removing a live sandbox's slot is worse than keeping a stale one.
"""

from __future__ import annotations

import enum
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

OWNER_FILE = ".owner"


class Liveness(enum.Enum):
    """What an owner record says about the process it names."""

    ALIVE = "alive"
    GONE = "gone"
    UNKNOWN = "unknown"


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot; None when there is no such process
    or it has exited and waits to be reaped (a zombie holds its pid, not its resources, and an
    init that reaps late must not keep a dead owner's resources from being reclaimed)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        fields = stat.rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class ProcessOwner:
    """A process, identified so that a reused pid is not mistaken for it."""

    pid: int
    start_time: int

    @classmethod
    def current(cls) -> ProcessOwner:
        pid = os.getpid()
        started = process_start_time(pid)
        if started is None:
            raise OSError(f"/proc/{pid}/stat is unreadable: is /proc mounted?")
        return cls(pid, started)

    @classmethod
    def parse(cls, text: str) -> ProcessOwner | None:
        """The record in ``text``, or None when it is not a complete record."""
        fields = text.split()
        if len(fields) != 2 or not all(field.isdigit() for field in fields):
            return None
        return cls(int(fields[0]), int(fields[1]))

    def render(self) -> str:
        return f"{self.pid} {self.start_time}\n"

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time


def write_owner(path: Path, owner: ProcessOwner | None = None) -> None:
    """Write the owner record at ``path`` atomically (temporary sibling, then rename)."""
    record = (owner or ProcessOwner.current()).render()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as target:
            target.write(record)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def owner_liveness(path: Path) -> Liveness:
    """Whether the process named in the owner record at ``path`` still runs.

    A missing file is GONE (nothing claims the resource); an unreadable or partial one is
    UNKNOWN, and callers keep what it guards.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Liveness.GONE
    except OSError:
        return Liveness.UNKNOWN
    owner = ProcessOwner.parse(text)
    if owner is None:
        return Liveness.UNKNOWN
    return Liveness.ALIVE if owner.alive() else Liveness.GONE

"""Names of in-flight ``atomic_write`` temporaries, and the sweep that removes dead writers' ones.

A temporary is a hidden sibling of the file being written, renamed (or linked) over it when
complete::

    .memfile.3f9a0c1e-41237-8812345.k3j2x9ab.tmp
     ^name    ^boot    ^pid  ^start  ^random
              id       of the writing process (start: /proc/<pid>/stat field 22, clock
                                               ticks since boot, so a reused pid differs)

A writer killed part way (a copy-build of a 200 MiB memfile stopped with SIGKILL) leaves its
temporary behind, and a re-run writes a new one beside it. The name says who wrote it, so
``sweep_stale_temporaries`` can remove exactly the ones whose writer is gone. It keeps every
temporary it cannot judge: one written on another host or before a reboot (the boot id
differs: the pid means nothing here), one whose writer's start time was unknown, and any
file of another shape.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path
from typing import Final

from ember.errors import StorageError

_UNKNOWN_BOOT: Final = "00000000"
_NAME: Final = re.compile(
    r"^\.(?P<object>.+)\.(?P<boot>[0-9a-f]{8})-(?P<pid>[0-9]+)-(?P<start>[0-9]+)\.[a-z0-9_]+\.tmp$"
)

_writer_tag: tuple[int, str] | None = None


def process_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _boot_id() -> str:
    try:
        text = Path("/proc/sys/kernel/random/boot_id").read_text()
    except OSError:
        return _UNKNOWN_BOOT
    tag = text.strip().replace("-", "")[:8].lower()
    return tag if re.fullmatch(r"[0-9a-f]{8}", tag) else _UNKNOWN_BOOT


def writer_tag() -> str:
    """``<boot>-<pid>-<start>`` of the calling process (recomputed after a fork)."""
    global _writer_tag
    pid = os.getpid()
    if _writer_tag is None or _writer_tag[0] != pid:
        _writer_tag = (pid, f"{_boot_id()}-{pid}-{process_start_time(pid) or 0}")
    return _writer_tag[1]


def temporary_prefix(name: str) -> str:
    """The ``mkstemp`` prefix of a temporary for file ``name`` written by this process."""
    return f".{name}.{writer_tag()}."


def _writer_gone(boot: str, pid: int, start: str) -> bool:
    if boot == _UNKNOWN_BOOT or boot != _boot_id() or start == "0":
        return False
    return process_start_time(pid) != start


def sweep_stale_temporaries(directory: Path) -> list[Path]:
    """Remove the temporaries in ``directory`` (not below it) whose writing process is gone.

    Returns what was removed. A missing directory has nothing to sweep.
    """
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StorageError(f"cannot list {directory}: {exc}; check permissions") from exc
    removed: list[Path] = []
    for entry in entries:
        match = _NAME.match(entry.name)
        if match is None or not _writer_gone(match["boot"], int(match["pid"]), match["start"]):
            continue
        try:
            if not stat.S_ISREG(entry.lstat().st_mode):
                continue
            entry.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StorageError(
                f"cannot remove the stale temporary {entry}: {exc}; check permissions or delete it by hand"
            ) from exc
        removed.append(entry)
    return removed


def remove_quietly(path: str | Path) -> None:
    """Unlink a temporary on an error path, where a second failure must not hide the first."""
    with contextlib.suppress(OSError):
        os.unlink(path)

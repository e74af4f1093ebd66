"""Which process owns which slot, so a crashed process's slots can be reclaimed safely.

``reclaim_leftovers`` removes every ``ns-<n>``, which is right at a daemon's startup but
would tear down the slots of another ember command running at the same time. Owner files
make a narrower reclaim possible: each acquired slot gets ``/run/ember/slots/<idx>`` naming
the owning process (pid and start time, so a reused pid is not mistaken for the owner);
a slot whose owner is gone is an orphan and is removed, whatever else is running.

An owner file is an ``ember.owner`` record, written to a temporary sibling and renamed into
place, so a reclaim never reads half of one. A file it cannot read or parse anyway (written
by an older ember in place, a full disk) names no owner: the slot is kept while the file is
younger than ``UNREADABLE_GRACE_S`` (its writer may be finishing it) and treated as
orphaned after that, since nothing will ever complete it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ember.network.addressing import SlotConfig
from ember.network.errors import NetworkError
from ember.network.slot import remove_slot
from ember.owner import ProcessOwner, write_owner

_log = logging.getLogger(__name__)

OWNERS_DIR = Path("/run/ember/slots")
UNREADABLE_GRACE_S = 10.0


def claim(idx: int, owners_dir: Path = OWNERS_DIR) -> None:
    """Record this process as the owner of slot ``idx``, atomically (see the module docstring)."""
    write_owner(owners_dir / str(idx))


def disclaim(idx: int, owners_dir: Path = OWNERS_DIR) -> None:
    (owners_dir / str(idx)).unlink(missing_ok=True)


def _owner_alive(entry: Path) -> bool:
    """Whether the owner file names a live process; an unreadable one counts as alive while young."""
    try:
        owner = ProcessOwner.parse(entry.read_text())
    except FileNotFoundError:
        return True  # released meanwhile: nothing to reclaim
    except (OSError, UnicodeDecodeError):
        owner = None
    if owner is None:
        try:
            age_s = time.time() - entry.stat().st_mtime
        except OSError:
            return True
        return age_s < UNREADABLE_GRACE_S
    return owner.alive()


def reclaim_orphans(config: SlotConfig | None = None, owners_dir: Path = OWNERS_DIR) -> list[int]:
    """Remove the slots whose owning process has exited; returns their indices."""
    if not owners_dir.is_dir():
        return []
    settings = config or SlotConfig.from_env()
    reclaimed = []
    for entry in sorted(owners_dir.iterdir()):
        if not entry.name.isdigit() or _owner_alive(entry):
            continue
        idx = int(entry.name)
        try:
            remove_slot(settings.slot(idx))
        except NetworkError as exc:
            _log.warning("cannot reclaim orphaned network slot %d: %s", idx, exc)
            continue
        entry.unlink(missing_ok=True)
        reclaimed.append(idx)
        _log.info("reclaimed network slot %d of an exited process", idx)
    return reclaimed

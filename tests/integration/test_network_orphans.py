"""A slot whose owning process died is reclaimed by the next pool, while live owners keep theirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ember.network import SlotPool

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="network slots need root"),
]

CRASH = """
import os, sys
from pathlib import Path
from ember.network import SlotPool
pool = SlotPool(owners_dir=Path(sys.argv[1]))
slot = pool.acquire()
print(slot.namespace, flush=True)
os._exit(9)
"""


def _namespaces() -> set[str]:
    return set(os.listdir("/var/run/netns")) if os.path.isdir("/var/run/netns") else set()


def test_the_next_pool_reclaims_a_crashed_owners_slot_but_not_a_live_one(tmp_path: Path) -> None:
    owners = tmp_path / "owners"
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH, str(owners)], capture_output=True, text=True, check=False
    )
    orphan = crashed.stdout.strip()
    assert crashed.returncode == 9 and orphan in _namespaces()
    with SlotPool(owners_dir=owners) as pool:
        assert orphan not in _namespaces()
        live = pool.acquire()
        assert (owners / str(live.idx)).exists()
        with SlotPool(owners_dir=owners):
            assert live.namespace in _namespaces()
    assert live.namespace not in _namespaces()
    assert list(owners.iterdir()) == []

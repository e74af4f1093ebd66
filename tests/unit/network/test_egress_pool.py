"""The pool hands a policy to each slot, retries failed releases, and reclaims orphans at any time safely.

Slot creation and removal are in-memory fakes here; owner files are real, under tmp_path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from ember.network import EgressPolicy, NetworkError, Slot, SlotConfig, SlotPool, ownership
from ember.network import pool as pool_module
from ember.network.egress import DEFAULT_EGRESS

CONFIG = SlotConfig()
WAIT_S = 5.0


class FakeHost:
    """Slots in memory: records each slot's policy; ``fail_remove`` makes removals fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.live: dict[int, EgressPolicy] = {}
        self.fail_remove = False
        self.on_create: Callable[[int], None] = lambda idx: None
        monkeypatch.setattr(pool_module, "create_slot", self.create)
        monkeypatch.setattr(pool_module, "remove_slot", self.remove)
        monkeypatch.setattr(ownership, "remove_slot", self.remove)

    def create(
        self, idx: int, config: SlotConfig | None = None, egress: EgressPolicy = DEFAULT_EGRESS
    ) -> Slot:
        assert config is not None
        self.on_create(idx)
        self.live[idx] = egress
        return config.slot(idx)

    def remove(self, slot: Slot) -> None:
        if self.fail_remove:
            raise NetworkError("iptables-restore failed")
        self.live.pop(slot.idx, None)


def owners(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir())


def test_each_slot_gets_the_policy_it_was_acquired_with(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = FakeHost(monkeypatch)
    closed = EgressPolicy(allow_internet_access=False)
    pool = SlotPool(CONFIG, owners_dir=tmp_path)
    pool.acquire(closed)
    pool.acquire()
    assert host.live == {1: closed, 2: DEFAULT_EGRESS}


def test_a_failed_release_keeps_its_index_and_owner_until_a_retry_succeeds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = FakeHost(monkeypatch)
    pool = SlotPool(CONFIG, owners_dir=tmp_path)
    slot = pool.acquire()
    host.fail_remove = True
    with pytest.raises(NetworkError, match="iptables-restore failed"):
        pool.release(slot)
    assert pool.in_use == [] and owners(tmp_path) == ["1"]
    assert pool.retry_failed_releases() == []
    assert pool.acquire().idx == 2

    host.fail_remove = False
    assert pool.retry_failed_releases() == [1]
    assert pool.retry_failed_releases() == []
    assert owners(tmp_path) == ["2"]
    assert pool.acquire().idx == 1


def test_closing_the_pool_retries_failed_releases(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    host = FakeHost(monkeypatch)
    pool = SlotPool(CONFIG, owners_dir=tmp_path)
    first, _second = pool.acquire(), pool.acquire()
    host.fail_remove = True
    with pytest.raises(NetworkError):
        pool.release(first)
    with pytest.raises(NetworkError):
        pool.close()
    host.fail_remove = False
    pool.close()
    assert host.live == {} and owners(tmp_path) == []


def test_a_reclaim_at_any_time_removes_orphans_and_none_of_the_pools_slots(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = FakeHost(monkeypatch)
    dead = "999999999 0\n"  # no process has this pid and start time
    (tmp_path / "1").write_text(dead)  # stale: its slot was removed, the record was not
    pool = SlotPool(CONFIG, owners_dir=tmp_path)
    assert owners(tmp_path) == []
    held = pool.acquire()
    host.live[7] = DEFAULT_EGRESS
    (tmp_path / "7").write_text(dead)
    assert pool.reclaim_orphans() == [7]
    assert host.live == {held.idx: DEFAULT_EGRESS}
    assert owners(tmp_path) == [str(held.idx)]


def test_a_reclaim_waits_for_the_slots_being_created_to_be_claimed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = FakeHost(monkeypatch)
    creating, finish_creating = threading.Event(), threading.Event()
    seen: list[list[str]] = []
    monkeypatch.setattr(
        pool_module, "reclaim_orphans", lambda config, directory: seen.append(owners(directory)) or []
    )
    pool = SlotPool(CONFIG, owners_dir=tmp_path)

    def slow_create(idx: int) -> None:
        creating.set()
        finish_creating.wait(WAIT_S)

    host.on_create = slow_create
    acquiring = threading.Thread(target=pool.acquire)
    acquiring.start()
    assert creating.wait(WAIT_S)
    reclaiming = threading.Thread(target=pool.reclaim_orphans)
    reclaiming.start()
    reclaiming.join(0.2)
    assert reclaiming.is_alive() and len(seen) == 1
    finish_creating.set()
    acquiring.join(WAIT_S)
    reclaiming.join(WAIT_S)
    assert seen == [[], ["1"]]


def test_no_slot_is_created_while_a_reclaim_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    host = FakeHost(monkeypatch)
    reclaiming, finish_reclaim = threading.Event(), threading.Event()
    pool = SlotPool(CONFIG, owners_dir=tmp_path)

    def slow_reclaim(config: SlotConfig, directory: Path) -> list[int]:
        reclaiming.set()
        finish_reclaim.wait(WAIT_S)
        return []

    monkeypatch.setattr(pool_module, "reclaim_orphans", slow_reclaim)
    reclaim = threading.Thread(target=pool.reclaim_orphans)
    reclaim.start()
    assert reclaiming.wait(WAIT_S)
    acquiring = threading.Thread(target=pool.acquire)
    acquiring.start()
    acquiring.join(0.2)
    assert acquiring.is_alive() and host.live == {}
    finish_reclaim.set()
    reclaim.join(WAIT_S)
    acquiring.join(WAIT_S)
    assert list(host.live) == [1]

"""The pool hands out the lowest free slot, reuses released ones and skips slots held elsewhere.

Slot creation is replaced by a recorder here; tests/integration/test_network_slots.py runs
the pool against the kernel.
"""

from __future__ import annotations

import threading
from ipaddress import IPv4Network

import pytest

from ember.network import NetworkError, Slot, SlotBusy, SlotConfig, SlotPool
from ember.network import pool as pool_module

SMALL = SlotConfig(vrt_cidr=IPv4Network("10.12.0.0/29"))  # 2 slots


class FakeHost:
    """Creates and removes slots in memory; indices in ``busy`` are held by someone else."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, busy: set[int] | None = None) -> None:
        self.live: set[int] = set()
        self.busy = busy or set()
        self.fail_create: Exception | None = None
        self.fail_remove: Exception | None = None
        self._lock = threading.Lock()
        monkeypatch.setattr(pool_module, "create_slot", self.create)
        monkeypatch.setattr(pool_module, "remove_slot", self.remove)

    def create(self, idx: int, config: SlotConfig | None = None) -> Slot:
        assert config is not None
        if idx in self.busy:
            raise SlotBusy(idx, f"network namespace ns-{idx}")
        if self.fail_create is not None:
            raise self.fail_create
        with self._lock:
            assert idx not in self.live, f"slot {idx} created twice"
            self.live.add(idx)
        return config.slot(idx)

    def remove(self, slot: Slot) -> None:
        if self.fail_remove is not None:
            raise self.fail_remove
        with self._lock:
            self.live.remove(slot.idx)


def test_slots_come_lowest_index_first(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeHost(monkeypatch)
    pool = SlotPool(SlotConfig())
    assert [pool.acquire().idx for _ in range(3)] == [1, 2, 3]
    assert pool.in_use == [1, 2, 3]


def test_a_released_index_is_handed_out_again_first(monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(monkeypatch)
    pool = SlotPool(SlotConfig())
    first, second, _third = (pool.acquire() for _ in range(3))
    pool.release(second)
    pool.release(first)
    assert host.live == {3}
    assert [pool.acquire().idx, pool.acquire().idx, pool.acquire().idx] == [1, 2, 4]


def test_a_slot_held_elsewhere_is_skipped_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(monkeypatch, busy={1})
    pool = SlotPool(SlotConfig())
    assert pool.acquire().idx == 2
    host.busy.clear()
    assert pool.acquire().idx == 1


def test_an_exhausted_pool_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeHost(monkeypatch, busy={2})
    pool = SlotPool(SMALL)
    assert pool.acquire().idx == 1
    with pytest.raises(NetworkError, match="all 2 network slots are in use or busy: release sandboxes"):
        pool.acquire()


def test_a_failed_creation_frees_its_index(monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(monkeypatch)
    pool = SlotPool(SlotConfig())
    host.fail_create = NetworkError("no veth support")
    with pytest.raises(NetworkError, match="no veth support"):
        pool.acquire()
    host.fail_create = None
    assert pool.acquire().idx == 1


def test_a_slot_whose_removal_failed_is_not_handed_out_again(monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(monkeypatch)
    pool = SlotPool(SlotConfig())
    slot = pool.acquire()
    host.fail_remove = NetworkError("iptables-restore failed")
    with pytest.raises(NetworkError):
        pool.release(slot)
    host.fail_remove = None
    assert pool.acquire().idx == 2


def test_releasing_a_slot_from_elsewhere_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(monkeypatch)
    pool = SlotPool(SlotConfig())
    pool.acquire()
    with pytest.raises(NetworkError, match="not acquired from this pool"):
        pool.release(SlotConfig().slot(9))
    assert host.live == {1}


def test_leaving_the_pool_removes_every_slot_still_out(monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(monkeypatch)
    with SlotPool(SlotConfig()) as pool:
        pool.acquire()
        pool.release(pool.acquire())
        pool.acquire()
        assert host.live == {1, 2}
    assert host.live == set()
    assert pool.in_use == []


def test_concurrent_acquires_get_distinct_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(monkeypatch)
    pool = SlotPool(SlotConfig())
    got: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(25):
            idx = pool.acquire().idx
            with lock:
                got.append(idx)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == list(range(1, 101))
    assert host.live == set(range(1, 101))

"""The pool hands out the lowest free slot, reuses released ones and skips slots held elsewhere.

Slot creation and removal are replaced by a recorder here, and every pool keeps its owner
files under the test's own directory: nothing touches the host's /run/ember/slots or its
network. tests/integration/test_network_slots.py runs the pool against the kernel.
"""

from __future__ import annotations

import os
import threading
import time
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from ember.network import NetworkError, Slot, SlotBusy, SlotConfig, SlotPool, ownership
from ember.network import pool as pool_module

SMALL = SlotConfig(vrt_cidr=IPv4Network("10.12.0.0/29"))  # 2 slots


class FakeHost:
    """Creates and removes slots in memory; indices in ``busy`` are held by someone else."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owners: Path, busy: set[int] | None = None) -> None:
        self.live: set[int] = set()
        self.removed: list[int] = []
        self.busy = busy or set()
        self.owners = owners
        self.fail_create: Exception | None = None
        self.fail_remove: Exception | None = None
        self._lock = threading.Lock()
        monkeypatch.setattr(pool_module, "create_slot", self.create)
        monkeypatch.setattr(pool_module, "remove_slot", self.remove)
        monkeypatch.setattr(ownership, "remove_slot", self.remove)  # the orphan reclaim's removals

    def pool(self, config: SlotConfig | None = None) -> SlotPool:
        return SlotPool(config or SlotConfig(), owners_dir=self.owners)

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
            self.live.discard(slot.idx)
            self.removed.append(slot.idx)


def test_slots_come_lowest_index_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pool = FakeHost(monkeypatch, tmp_path).pool()
    assert [pool.acquire().idx for _ in range(3)] == [1, 2, 3]
    assert pool.in_use == [1, 2, 3]


def test_a_released_index_is_handed_out_again_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    host = FakeHost(monkeypatch, tmp_path)
    pool = host.pool()
    first, second, _third = (pool.acquire() for _ in range(3))
    pool.release(second)
    pool.release(first)
    assert host.live == {3}
    assert [pool.acquire().idx, pool.acquire().idx, pool.acquire().idx] == [1, 2, 4]


def test_a_slot_held_elsewhere_is_skipped_not_taken(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    host = FakeHost(monkeypatch, tmp_path, busy={1})
    pool = host.pool()
    assert pool.acquire().idx == 2
    host.busy.clear()
    assert pool.acquire().idx == 1


def test_an_exhausted_pool_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pool = FakeHost(monkeypatch, tmp_path, busy={2}).pool(SMALL)
    assert pool.acquire().idx == 1
    with pytest.raises(NetworkError, match="all 2 network slots are in use or busy: release sandboxes"):
        pool.acquire()


def test_a_failed_creation_frees_its_index(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    host = FakeHost(monkeypatch, tmp_path)
    pool = host.pool()
    host.fail_create = NetworkError("no veth support")
    with pytest.raises(NetworkError, match="no veth support"):
        pool.acquire()
    host.fail_create = None
    assert pool.acquire().idx == 1


def test_a_slot_whose_removal_failed_is_not_handed_out_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = FakeHost(monkeypatch, tmp_path)
    pool = host.pool()
    slot = pool.acquire()
    host.fail_remove = NetworkError("iptables-restore failed")
    with pytest.raises(NetworkError):
        pool.release(slot)
    host.fail_remove = None
    assert pool.acquire().idx == 2


def test_releasing_a_slot_from_elsewhere_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    host = FakeHost(monkeypatch, tmp_path)
    pool = host.pool()
    pool.acquire()
    with pytest.raises(NetworkError, match="not acquired from this pool"):
        pool.release(SlotConfig().slot(9))
    assert host.live == {1}


def test_leaving_the_pool_removes_every_slot_still_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = FakeHost(monkeypatch, tmp_path)
    with host.pool() as pool:
        pool.acquire()
        pool.release(pool.acquire())
        pool.acquire()
        assert host.live == {1, 2}
    assert host.live == set()
    assert pool.in_use == []


def test_concurrent_acquires_get_distinct_slots(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    host = FakeHost(monkeypatch, tmp_path)
    pool = host.pool()
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


def test_a_pool_records_its_slots_in_its_owners_dir_and_clears_them_on_release(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pool = FakeHost(monkeypatch, tmp_path).pool()
    slot = pool.acquire()
    pid, started = (tmp_path / str(slot.idx)).read_text().split()
    assert int(pid) == os.getpid() and started.isdigit()
    pool.release(slot)
    assert list(tmp_path.iterdir()) == []


def test_the_slot_of_an_exited_owner_is_reclaimed_through_the_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = FakeHost(monkeypatch, tmp_path)
    (tmp_path / "5").write_text("999999999 1\n")
    host.pool()
    assert host.removed == [5]
    assert not (tmp_path / "5").exists()


@pytest.mark.parametrize("record", ["", "4242", "4242 12 extra", "\xff\xfe"])
def test_a_partly_written_owner_file_keeps_its_slot_until_it_is_old(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, record: str
) -> None:
    host = FakeHost(monkeypatch, tmp_path)
    owner_file = tmp_path / "3"
    owner_file.write_text(record)
    host.pool()
    assert host.removed == []
    assert owner_file.exists()
    stale = time.time() - 2 * ownership.UNREADABLE_GRACE_S
    os.utime(owner_file, (stale, stale))
    host.pool()
    assert host.removed == [3]


def test_an_owner_file_is_never_seen_half_written(tmp_path: Path) -> None:
    stop = threading.Event()
    seen: set[str] = set()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add((tmp_path / "1").read_text())
            except FileNotFoundError:
                continue

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(3000):
            ownership.claim(1, tmp_path)
    finally:
        stop.set()
        reader.join()
    assert len(seen) == 1 and next(iter(seen)).count(" ") == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["1"]

"""The slot keeper: one thread (pyroute2 forks its helpers from it), concurrent callers, warm slots."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from network_guests import need_root_and_iptables

from ember.network import Slot, SlotConfig
from ember.network.links import slot_namespaces
from ember.sandbox.slots import SlotKeeper

pytestmark = pytest.mark.root


def _threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def test_the_keeper_serves_concurrent_callers_from_one_thread_and_keeps_a_slot_warm(tmp_path: Path) -> None:
    need_root_and_iptables()
    keeper = SlotKeeper(SlotConfig(), tmp_path / "owners", warm=1)
    slots: list[Slot] = []
    try:
        deadline = time.monotonic() + 30
        while not list((tmp_path / "owners").glob("[0-9]*")):  # the warm slot is made unasked
            assert time.monotonic() < deadline, "no warm slot was made"
            time.sleep(0.05)
        with ThreadPoolExecutor(4) as callers:
            slots = list(callers.map(lambda _: keeper.acquire(), range(4)))
            assert _threads(keeper.pid) == 1, "a thread beside the one that forks pyroute2's helpers"
        assert len({slot.idx for slot in slots}) == 4
        assert {slot.namespace for slot in slots} <= set(slot_namespaces())
        for slot in slots:
            keeper.release(slot)
        assert not {slot.namespace for slot in slots} & set(slot_namespaces())
        slots = []
    finally:
        for slot in slots:
            keeper.release(slot)
        keeper.close()
    assert not list((tmp_path / "owners").glob("[0-9]*")), "close left a slot (the warm one) behind"

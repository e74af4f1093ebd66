"""A thread-safe pool of network slots: the lowest free index first, reused after release.

Only the index bookkeeping happens under the lock; creating and removing slots (tens of
milliseconds of netlink and iptables work) runs outside it, so slots are set up in parallel.
An index held by something outside this pool (``SlotBusy``) is skipped, not taken over.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType

from ember.network.addressing import VRT_CIDR_VARIABLE, Slot, SlotConfig
from ember.network.errors import NetworkError, SlotBusy
from ember.network.ownership import OWNERS_DIR, claim, disclaim, reclaim_orphans
from ember.network.slot import create_slot, remove_slot


class SlotPool:
    """Hands out network slots; ``release`` (or leaving the ``with``) removes them again."""

    def __init__(self, config: SlotConfig | None = None, owners_dir: Path = OWNERS_DIR) -> None:
        """Reclaims the slots of exited ember processes first (see ``ember.network.ownership``)."""
        self.config = config or SlotConfig.from_env()
        self._owners_dir = owners_dir
        reclaim_orphans(self.config, owners_dir)
        self._lock = threading.Lock()
        self._reserved: set[int] = set()
        self._slots: dict[int, Slot] = {}

    def _reserve(self, skipped: set[int]) -> int:
        with self._lock:
            for idx in range(1, self.config.slot_count + 1):
                if idx not in self._reserved and idx not in skipped:
                    self._reserved.add(idx)
                    return idx
        raise NetworkError(
            f"all {self.config.slot_count} network slots are in use or busy: release sandboxes, "
            f"or widen {VRT_CIDR_VARIABLE}"
        )

    def _unreserve(self, idx: int) -> None:
        with self._lock:
            self._reserved.discard(idx)

    def acquire(self) -> Slot:
        """Create the slot with the lowest index neither in use nor busy."""
        skipped: set[int] = set()
        while True:
            idx = self._reserve(skipped)
            try:
                slot = create_slot(idx, self.config)
            except SlotBusy:
                self._unreserve(idx)
                skipped.add(idx)
                continue
            except BaseException:
                self._unreserve(idx)
                raise
            with self._lock:
                self._slots[idx] = slot
            claim(idx, self._owners_dir)
            return slot

    def release(self, slot: Slot) -> None:
        """Remove the slot and free its index; if removal fails the index stays taken."""
        with self._lock:
            if self._slots.get(slot.idx) != slot:
                raise NetworkError(f"network slot {slot.idx} was not acquired from this pool")
            del self._slots[slot.idx]
        remove_slot(slot)
        disclaim(slot.idx, self._owners_dir)
        self._unreserve(slot.idx)

    @property
    def in_use(self) -> list[int]:
        """Indices of the slots handed out and not yet released, ascending."""
        with self._lock:
            return sorted(self._slots)

    def close(self) -> None:
        """Release every slot still handed out; raise the first failure after trying all."""
        with self._lock:
            slots = list(self._slots.values())
        failure: BaseException | None = None
        for slot in slots:
            try:
                self.release(slot)
            except NetworkError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def __enter__(self) -> SlotPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

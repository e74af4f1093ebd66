"""A thread-safe pool of network slots: the lowest free index first, reused after release.

Only the index bookkeeping happens under the lock; creating and removing slots (tens of
milliseconds of netlink and iptables work) runs outside it, so slots are set up in parallel.
An index held by something outside this pool (``SlotBusy``) is skipped, not taken over.

A slot whose removal failed keeps its index (its objects may still exist, so handing the index
out again would meet them) and its owner file (so no other process reclaims it while this one
lives); ``retry_failed_releases`` tries again, and ``close`` does too. ``reclaim_orphans`` can run
at any time, not only when the pool is built: it waits for the pool's slot creations in flight
and holds new ones back while it runs, because a slot between its creation and its owner file
could carry a dead process's stale record and be taken for an orphan. Every other slot the pool
holds is recorded as this live process's, so the reclaim passes over it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import TracebackType

from ember.network.addressing import VRT_CIDR_VARIABLE, Slot, SlotConfig
from ember.network.egress import EgressPolicy
from ember.network.errors import NetworkError, SlotBusy
from ember.network.ownership import OWNERS_DIR, claim, disclaim, reclaim_orphans
from ember.network.slot import create_slot, remove_slot

_log = logging.getLogger(__name__)


class SlotPool:
    """Hands out network slots; ``release`` (or leaving the ``with``) removes them again."""

    def __init__(self, config: SlotConfig | None = None, owners_dir: Path = OWNERS_DIR) -> None:
        """Reclaims the slots of exited ember processes first (see ``ember.network.ownership``)."""
        self.config = config or SlotConfig.from_env()
        self._owners_dir = owners_dir
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._reserved: set[int] = set()
        self._slots: dict[int, Slot] = {}
        self._failed: dict[int, Slot] = {}
        self._creating = 0
        self._reclaiming = False
        self.reclaimed = self.reclaim_orphans()
        """The slots of exited processes removed when the pool was made."""

    def _reserve(self, skipped: set[int]) -> int:
        with self._changed:
            self._changed.wait_for(lambda: not self._reclaiming)
            for idx in range(1, self.config.slot_count + 1):
                if idx not in self._reserved and idx not in skipped:
                    self._reserved.add(idx)
                    self._creating += 1
                    return idx
        raise NetworkError(
            f"all {self.config.slot_count} network slots are in use or busy: release sandboxes, "
            f"or widen {VRT_CIDR_VARIABLE}"
        )

    def _settle(self, idx: int, slot: Slot | None) -> None:
        """End the creation of ``idx``: the slot is handed out, or (None) its index is free again."""
        with self._changed:
            self._creating -= 1
            if slot is None:
                self._reserved.discard(idx)
            else:
                self._slots[idx] = slot
            self._changed.notify_all()

    def acquire(self, egress: EgressPolicy | None = None) -> Slot:
        """Create the slot with the lowest index neither in use nor busy, with ``egress`` as its policy.

        ``None`` gives ``create_slot``'s default policy (internet, nothing private).
        """
        skipped: set[int] = set()
        while True:
            idx = self._reserve(skipped)
            try:
                slot = (
                    create_slot(idx, self.config) if egress is None else create_slot(idx, self.config, egress)
                )
            except SlotBusy:
                self._settle(idx, None)
                skipped.add(idx)
                continue
            except BaseException:
                self._settle(idx, None)
                raise
            try:
                claim(idx, self._owners_dir)
            finally:
                self._settle(idx, slot)
            return slot

    def _remove(self, slot: Slot) -> None:
        """Remove the slot and free its index; on failure keep both for ``retry_failed_releases``."""
        try:
            remove_slot(slot)
        except BaseException:
            with self._lock:
                self._failed[slot.idx] = slot
            raise
        disclaim(slot.idx, self._owners_dir)
        with self._lock:
            self._failed.pop(slot.idx, None)
            self._reserved.discard(slot.idx)

    def release(self, slot: Slot) -> None:
        """Remove the slot and free its index; if removal fails the index stays taken until a retry."""
        with self._lock:
            if self._slots.get(slot.idx) != slot:
                raise NetworkError(f"network slot {slot.idx} was not acquired from this pool")
            del self._slots[slot.idx]
        self._remove(slot)

    def retry_failed_releases(self) -> list[int]:
        """Try again to remove every slot whose release failed; returns the indices freed.

        A slot that fails again is logged and kept for the next try.
        """
        with self._lock:
            failed = list(self._failed.values())
        freed = []
        for slot in failed:
            try:
                self._remove(slot)
            except NetworkError as exc:
                _log.warning("network slot %d still cannot be removed: %s", slot.idx, exc)
                continue
            freed.append(slot.idx)
        return freed

    def reclaim_orphans(self) -> list[int]:
        """Remove the slots of exited ember processes, never one of this pool's; returns their indices."""
        with self._changed:
            self._changed.wait_for(lambda: not self._reclaiming and self._creating == 0)
            self._reclaiming = True
        try:
            return reclaim_orphans(self.config, self._owners_dir)
        finally:
            with self._changed:
                self._reclaiming = False
                self._changed.notify_all()

    @property
    def in_use(self) -> list[int]:
        """Indices of the slots handed out and not yet released, ascending."""
        with self._lock:
            return sorted(self._slots)

    def close(self) -> None:
        """Release every slot still handed out and retry failed releases; raise the first failure."""
        with self._lock:
            slots = list(self._slots.values())
            failed = list(self._failed.values())
        failure: BaseException | None = None
        for slot in slots:
            try:
                self.release(slot)
            except NetworkError as exc:
                failure = failure or exc
        for slot in failed:
            try:
                self._remove(slot)
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

"""Which blocks of a copy-on-write device the writable layer owns, and how.

One byte per block (facts file 3.5, 3.6)::

    block   0    1    2    3    4    5    6   ...
    state  [0]  [1]  [1]  [2]  [0]  [0]  [2]  ...     uint8, one per 4 KiB block
            |    |         |
            |    DIRTY:    ZERO: known all-zero, held by no data object (maps to NIL_UUID)
            |    data in the cache file at the same offset
            NOT_PRESENT: never written; reads fall through to the base device

Export turns the array into the two block sets a diff header is built from: DIRTY blocks
become the new build's data, ZERO blocks map to nil, NOT_PRESENT blocks keep the parent's
mapping.
"""

from __future__ import annotations

import enum
import threading
from typing import Final

import numpy as np
import numpy.typing as npt

from ember.errors import UsageError


class BlockState(enum.IntEnum):
    """What the writable layer knows about one block."""

    NOT_PRESENT = 0
    DIRTY = 1
    ZERO = 2


_STATES: Final = tuple(BlockState)
"""State by stored byte value, cheaper than calling the enum once per run."""


class BlockTracker:
    """The state of every block of one device.

    Thread safety: ``mark`` and ``export`` hold one lock, so an export never sees half of a
    ``mark``. Readers of single states (``state_of``, ``states``) take the same lock and get
    a value or a copy that is consistent at one instant.
    """

    def __init__(self, block_count: int) -> None:
        if block_count < 0:
            raise UsageError(f"a device cannot have {block_count} blocks: the count must be >= 0")
        self._states = np.zeros(block_count, dtype=np.uint8)
        self._lock = threading.Lock()

    @property
    def block_count(self) -> int:
        return len(self._states)

    def _check(self, first_block: int, end_block: int) -> None:
        if first_block < 0 or end_block > len(self._states):
            raise UsageError(
                f"blocks [{first_block}, {end_block}) are outside the device's {len(self._states)} blocks: "
                "the caller computed a range past the device end"
            )

    def mark(self, first_block: int, end_block: int, state: BlockState) -> None:
        """Set blocks ``[first_block, end_block)`` to ``state``; an empty or inverted range does nothing."""
        if end_block <= first_block:
            return
        self._check(first_block, end_block)
        with self._lock:
            self._states[first_block:end_block] = state

    def state_of(self, block: int) -> BlockState:
        self._check(block, block + 1)
        with self._lock:
            return BlockState(int(self._states[block]))

    def states(self, first_block: int, end_block: int) -> npt.NDArray[np.uint8]:
        """A copy of the states of ``[first_block, end_block)`` (values of ``BlockState``)."""
        self._check(first_block, max(first_block, end_block))
        with self._lock:
            return self._states[first_block:end_block].copy()

    def export(self) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
        """``(dirty, empty)``: sorted indices of DIRTY and of ZERO blocks, fresh arrays the caller owns."""
        with self._lock:
            dirty = np.flatnonzero(self._states == BlockState.DIRTY).astype(np.uint64)
            empty = np.flatnonzero(self._states == BlockState.ZERO).astype(np.uint64)
        return dirty, empty


def state_runs(states: npt.NDArray[np.uint8]) -> list[tuple[int, int, BlockState]]:
    """Maximal runs ``(start, end, state)`` of equal states, indices relative to ``states``."""
    if len(states) == 0:
        return []
    changes = np.flatnonzero(states[1:] != states[:-1]) + 1
    starts = [0, *changes.tolist()]
    ends = [*starts[1:], len(states)]
    values = states[starts].tolist()
    return [(start, end, _STATES[value]) for start, end, value in zip(starts, ends, values, strict=True)]

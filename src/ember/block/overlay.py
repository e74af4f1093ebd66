"""The writable device a sandbox sees: a read-only base under a sparse copy-on-write cache.

Every block is resolved through the tracker (facts file 3.5, 3.6)::

    block state    NOT_PRESENT      DIRTY              ZERO
    read from      base device      cache file         nothing (zeros)
    in the diff    parent mapping   new build's data   NIL_UUID

A read is planned per run of equal states, never per block, so a large read is one base
read or one ``preadv`` per run. A write is cut into whole blocks (the edges of an unaligned
write are first filled from the block's current content), each block is tested for being
all zero, and runs of zero blocks are punched and marked ZERO while the rest are written
and marked DIRTY ("detect-zeroes=unmap"): a guest zeroing a block therefore frees it both
in the cache and in the exported diff. TRIM and WRITE_ZEROES both punch and mark ZERO.

Concurrency guarantees (what an NBD server serving many requests at once may rely on):

* writes lock the stripes of the blocks they touch (64 locks, 64 KiB stripes, taken in
  ascending order), so two writes sharing a block are serialized: every block ends up with
  one writer's bytes, and an unaligned write never loses a neighbour's bytes of its edge
  block. Writes to distinct stripes run in parallel;
* reads take no stripe lock. A read overlapping a concurrent write returns, for each block,
  its content before or after that write, or for a block rewritten in place a mix of the
  two, as a physical disk may; blocks not being written always read exactly;
* ``paused_writes`` holds every stripe, so an export sees one consistent state;
* the base device is only ever read.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Final, Protocol

import numpy as np

from ember.block.cache import Buffer, CowCache
from ember.block.tracker import BlockState, BlockTracker, state_runs
from ember.errors import BuildError, UsageError
from ember.header import DiffMetadata

STRIPE_LOCKS: Final = 64
STRIPE_BLOCKS: Final = 16


class BaseDevice(Protocol):
    """What an overlay reads untouched blocks from: a ``BuildFile``, a ``ZeroDevice``, another overlay."""

    @property
    def size(self) -> int: ...

    def readinto(self, buffer: bytearray | memoryview, offset: int) -> int: ...


class ZeroDevice:
    """An all-zero base of ``size_bytes``: the device under a new template's first layer."""

    def __init__(self, size_bytes: int) -> None:
        self._size_bytes = size_bytes

    @property
    def size(self) -> int:
        return self._size_bytes

    def readinto(self, buffer: bytearray | memoryview, offset: int) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._size_bytes - offset))
        _fill_zeros(view[:count])
        return count


def _fill_zeros(view: memoryview) -> None:
    np.frombuffer(view, dtype=np.uint8)[:] = 0


class Overlay:
    """A writable device of ``base.size`` bytes; the overlay owns ``cache`` and closes it."""

    def __init__(self, base: BaseDevice, cache: CowCache) -> None:
        if cache.size_bytes != base.size:
            raise UsageError(
                f"cache file {cache.path} holds {cache.size_bytes} bytes but the base device has "
                f"{base.size}: create the cache with the base device's size"
            )
        if cache.block_size % 8:
            raise UsageError(f"block size {cache.block_size} is not a multiple of 8: use 4096")
        self.base = base
        self.cache = cache
        self.tracker = BlockTracker(cache.block_count)
        self._stripes = [threading.Lock() for _ in range(STRIPE_LOCKS)]
        self._closed = False

    @property
    def size(self) -> int:
        return self.cache.size_bytes

    @property
    def block_size(self) -> int:
        return self.cache.block_size

    def __enter__(self) -> Overlay:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def _check(self, action: str, offset: int, length: int, past_end_ok: bool = False) -> None:
        """Refuse a closed overlay, negative values, and ranges leaving the device.

        With ``past_end_ok`` (reads) only the start must lie within the device: the read is short.
        """
        if self._closed:
            raise UsageError(f"cannot {action}: the overlay over {self.cache.path} is closed")
        end = offset if past_end_ok else offset + length
        if offset < 0 or length < 0 or end > self.size:
            raise UsageError(
                f"cannot {action} {length} bytes at offset {offset}: the device holds {self.size} bytes; "
                "requests must lie within it"
            )

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``; fewer only where the device ends."""
        self._check("read", offset, length, past_end_ok=True)
        buffer = bytearray(min(length, self.size - offset))
        self.readinto(buffer, offset)
        return bytes(buffer)

    def readinto(self, buffer: bytearray | memoryview, offset: int) -> int:
        """Fill ``buffer`` from ``offset``; returns the bytes filled (short only at the device end)."""
        view = memoryview(buffer).cast("B")
        self._check("read", offset, len(view), past_end_ok=True)
        count = min(len(view), self.size - offset)
        if count > 0:
            self._read(view[:count], offset)
        return count

    def _read(self, view: memoryview, offset: int) -> None:
        block_size = self.block_size
        end = offset + len(view)
        first_block = offset // block_size
        states = self.tracker.states(first_block, -(-end // block_size))
        for start, stop, state in state_runs(states):
            low = max(offset, (first_block + start) * block_size)
            high = min(end, (first_block + stop) * block_size)
            piece = view[low - offset : high - offset]
            if state == BlockState.ZERO:
                _fill_zeros(piece)
            elif state == BlockState.DIRTY:
                self.cache.readinto(piece, low)
            elif self.base.readinto(piece, low) != len(piece):
                raise BuildError(
                    f"the base device returned fewer than {len(piece)} bytes at offset {low} although it "
                    f"claims {self.base.size} bytes: its header or data object is inconsistent"
                )

    def write_at(self, data: Buffer, offset: int) -> None:
        """Store ``data`` at ``offset`` (any alignment); all-zero blocks become ZERO, others DIRTY."""
        view = memoryview(data).cast("B")
        self._check("write", offset, len(view))
        if not view:
            return
        with self._holding(self._stripes_of(offset, len(view))):
            self._write(view, offset)

    def write_zeroes_at(self, offset: int, length: int) -> None:
        """Make ``[offset, offset + length)`` read as zeros: whole blocks are punched and marked ZERO
        (NBD TRIM and WRITE_ZEROES), partial edge blocks are rewritten with zeros."""
        self._check("zero", offset, length)
        if length == 0:
            return
        block_size = self.block_size
        end = offset + length
        first_full = -(-offset // block_size)
        end_full = end // block_size
        with self._holding(self._stripes_of(offset, length)):
            if first_full >= end_full:
                self._write(memoryview(bytes(length)), offset)
                return
            self.cache.punch(first_full * block_size, (end_full - first_full) * block_size)
            self.tracker.mark(first_full, end_full, BlockState.ZERO)
            if offset < first_full * block_size:
                self._write(memoryview(bytes(first_full * block_size - offset)), offset)
            if end > end_full * block_size:
                self._write(memoryview(bytes(end - end_full * block_size)), end_full * block_size)

    def _write(self, view: memoryview, offset: int) -> None:
        """Store ``view`` at ``offset``; the caller holds the stripes of every block it touches."""
        block_size = self.block_size
        first_block = offset // block_size
        end_block = -(-(offset + len(view)) // block_size)
        head = offset - first_block * block_size
        tail = end_block * block_size - (offset + len(view))
        if head == 0 and tail == 0:
            self._store_blocks(view, first_block)
            return
        whole = memoryview(bytearray((end_block - first_block) * block_size))
        if head:
            self._read(whole[:block_size], first_block * block_size)
        if tail and (end_block - 1 > first_block or not head):
            self._read(whole[-block_size:], (end_block - 1) * block_size)
        whole[head : head + len(view)] = view
        self._store_blocks(whole, first_block)

    def _store_blocks(self, blocks: memoryview, first_block: int) -> None:
        block_size = self.block_size
        words = np.frombuffer(blocks, dtype=np.uint64).reshape(-1, block_size // 8)
        states = np.where(words.max(axis=1) == 0, BlockState.ZERO, BlockState.DIRTY).astype(np.uint8)
        for start, stop, state in state_runs(states):
            offset = (first_block + start) * block_size
            if state == BlockState.ZERO:
                self.cache.punch(offset, (stop - start) * block_size)
            else:
                self.cache.write(blocks[start * block_size : stop * block_size], offset)
            self.tracker.mark(first_block + start, first_block + stop, state)

    def _stripes_of(self, offset: int, length: int) -> list[int]:
        """Indices of the stripe locks covering the blocks of ``[offset, offset + length)``, ascending."""
        first_stripe = offset // self.block_size // STRIPE_BLOCKS
        last_stripe = (offset + length - 1) // self.block_size // STRIPE_BLOCKS
        if last_stripe - first_stripe + 1 >= STRIPE_LOCKS:
            return list(range(STRIPE_LOCKS))
        return sorted({stripe % STRIPE_LOCKS for stripe in range(first_stripe, last_stripe + 1)})

    @contextlib.contextmanager
    def _holding(self, indices: list[int]) -> Iterator[None]:
        with contextlib.ExitStack() as held:
            for index in indices:
                held.enter_context(self._stripes[index])
            yield

    @contextlib.contextmanager
    def paused_writes(self) -> Iterator[None]:
        """Hold out every writer (reads continue) for the duration of the ``with`` block."""
        with self._holding(list(range(STRIPE_LOCKS))):
            yield

    def diff_metadata(self) -> DiffMetadata:
        """The layer's dirty and empty block sets as of now."""
        dirty, empty = self.tracker.export()
        return DiffMetadata(dirty, empty, self.block_size)

    def flush(self) -> None:
        """Make every completed write durable in the cache file (NBD FLUSH)."""
        self._check("flush", 0, 0)
        self.cache.sync()

    def close(self) -> None:
        """Delete the cache once in-flight writes finish; the base device stays open (its owner
        closes it). Readers must have stopped: the server in front closes the overlay last.
        Calling it again does nothing."""
        with self.paused_writes():
            self._closed = True
            self.cache.close()

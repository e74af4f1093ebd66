"""Replaying prefetch data: loading a build's recorded pages into a mounted memory file ahead of the guest.

Started right after the memory file is mounted, before QEMU restores the snapshot (facts
file 4.6, 5.4). Each worker takes the next extent in prefetch order and::

    warm   source.readinto(extent)         remote builds only: the chunk cache fetches the
                                           extent's chunks (up to ``workers`` in parallel)
    fill   os.preadv(memory file, extent)  a FUSE READ from a registered prefetch thread: the
                                           pages land in the kernel's page cache, which the
                                           mount keeps (``kernel_cache``), so the guest's faults
                                           on them are served by the kernel and never reach FUSE

Fills are limited to ``fill_concurrency`` at a time (and so are the workers when there is
nothing to warm): the single FUSE loop serves requests in
arrival order, and a guest fault queued behind many prefetch reads would wait for them all.
The prefetcher's file descriptor reads with ``POSIX_FADV_RANDOM``: exactly the listed pages,
no readahead of its own.

Guarantees: every extent is read at most once; ``close`` stops handing out extents, waits
for the reads in flight (at most one per worker) and closes the file, and must run before
the memory file is unmounted. A failed read stops the prefetch, never the sandbox: the
guest's own faults load what is missing (and the memory file reports storage failures).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from ember.block import BaseDevice
from ember.errors import EmberError
from ember.memory.fuse import LazyMemory, LazyMemoryError
from ember.memory.prefetch import Extent

_log = logging.getLogger(__name__)

DEFAULT_WORKERS: Final = 16
DEFAULT_FILL_CONCURRENCY: Final = 2
CLOSE_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True)
class PrefetchStats:
    """Progress of one prefetcher; ``duration_s`` runs until the last extent finished (or now)."""

    extents: int
    extents_done: int
    bytes_loaded: int
    duration_s: float
    failure: str | None


class Prefetcher:
    """Loads ``extents`` of ``memory`` on up to ``workers`` threads; a context manager."""

    def __init__(
        self,
        memory: LazyMemory,
        extents: Sequence[Extent],
        *,
        source: BaseDevice | None = None,
        workers: int = DEFAULT_WORKERS,
        fill_concurrency: int = DEFAULT_FILL_CONCURRENCY,
    ) -> None:
        self._memory = memory
        self._extents = list(extents)
        self._source = source
        self._fill_slots = threading.BoundedSemaphore(max(1, fill_concurrency))
        self._lock = threading.Lock()
        self._next = 0
        self._done = 0
        self._loaded_bytes = 0
        self._failure: str | None = None
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._finished: float | None = None
        try:
            self._fd = os.open(memory.path, os.O_RDONLY | os.O_CLOEXEC)
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)
        except OSError as exc:
            raise LazyMemoryError(f"cannot open the memory file {memory.path} to prefetch: {exc}") from exc
        buffer_bytes = max((extent.length_bytes for extent in self._extents), default=0)
        # Without a source to warm, a worker only fills, and at most fill_concurrency fill at once.
        count = min(max(1, workers if source is not None else fill_concurrency), len(self._extents))
        self._threads = [
            threading.Thread(target=self._work, args=(buffer_bytes,), name=f"prefetch-{n}", daemon=True)
            for n in range(count)
        ]
        if not self._threads:
            self._finished = self._started
        for thread in self._threads:
            thread.start()

    def _take(self) -> Extent | None:
        with self._lock:
            if self._stop.is_set() or self._next >= len(self._extents):
                return None
            self._next += 1
            return self._extents[self._next - 1]

    def _work(self, buffer_bytes: int) -> None:
        thread_id = threading.get_native_id()
        self._memory.add_prefetcher(thread_id)
        buffer = memoryview(bytearray(buffer_bytes))
        try:
            while (extent := self._take()) is not None:
                view = buffer[: extent.length_bytes]
                try:
                    if self._source is not None:
                        self._source.readinto(view, extent.offset)
                    with self._fill_slots:
                        if self._stop.is_set():
                            return
                        loaded = os.preadv(self._fd, [view], extent.offset)
                except (OSError, EmberError) as exc:
                    self._fail(f"prefetching {extent.length_bytes} bytes at offset {extent.offset}: {exc}")
                    return
                with self._lock:
                    self._done += 1
                    self._loaded_bytes += loaded
                    if self._done == len(self._extents):
                        self._finished = time.monotonic()
        finally:
            self._memory.remove_prefetcher(thread_id)

    def _fail(self, message: str) -> None:
        _log.warning("memory prefetch stopped: %s", message)
        with self._lock:
            self._failure = self._failure or message
        self._stop.set()

    def stats(self) -> PrefetchStats:
        with self._lock:
            end = self._finished if self._finished is not None else time.monotonic()
            return PrefetchStats(
                len(self._extents), self._done, self._loaded_bytes, end - self._started, self._failure
            )

    def wait(self, timeout_s: float) -> bool:
        """Whether every worker finished within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Stop, wait for reads in flight, close the file; ``LazyMemoryError`` if a worker is stuck."""
        self._stop.set()
        if not self.wait(timeout_s):
            raise LazyMemoryError(
                f"memory prefetch workers did not stop within {timeout_s:.0f} s: the memory file at "
                f"{self._memory.path} is not answering reads; its file descriptor stays open"
            )
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

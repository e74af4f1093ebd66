"""Replaying prefetch data: loading a build's recorded pages into a mounted memory file ahead of the guest.

Started right after the memory file is mounted, before QEMU restores the snapshot (facts
file 4.6, 5.4)::

    warm   source.readinto(extent)         remote builds only, on up to ``workers`` threads
                                           here: the chunk cache fetches the extent's chunks
    fill   os.preadv(memory file, extent)  in the *fill process*: a FUSE READ from a registered
                                           prefetch thread; the pages land in the kernel's page
                                           cache, which the mount keeps (``kernel_cache``), so
                                           the guest's faults on them never reach FUSE

Fills run in a child process (a few lines of standard-library Python fed extents on its
stdin) because the memory file's own server must never wait on the file: a killed process
with a thread waiting for its own FUSE reply can never exit (see ``ember.memory.fuse``).
The child reads with ``fill_concurrency`` threads: the single FUSE loop serves requests in
arrival order, and a guest fault queued behind many prefetch reads would wait for them all.
Its file descriptor reads with ``POSIX_FADV_RANDOM``: exactly the listed pages, no
readahead of its own.

Guarantees: every extent is read at most once; ``close`` stops handing out extents, ends
the fill process and waits for it. A failed read stops the prefetch, never the sandbox:
the guest's own faults load what is missing (and the memory file reports storage failures).
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Final

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


_FILL_PROCESS: Final = """
import os, queue, sys, threading
path, concurrency = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
extents, out, lock = queue.Queue(), sys.stdout, threading.Lock()
def say(line):
    with lock:
        out.write(line + "\\n"); out.flush()
def fill():
    say(f"tid {threading.get_native_id()}")
    while (extent := extents.get()) is not None:
        offset, length = extent
        try:
            say(f"done {offset} {os.preadv(fd, [bytearray(length)], offset)}")
        except OSError as exc:
            say(f"fail {offset} {exc}")
threads = [threading.Thread(target=fill) for _ in range(concurrency)]
for thread in threads:
    thread.start()
for line in sys.stdin:
    offset, length = map(int, line.split())
    extents.put((offset, length))
for thread in threads:
    extents.put(None)
for thread in threads:
    thread.join()
"""


class Prefetcher:
    """Loads ``extents`` of ``memory``: warms on up to ``workers`` threads, fills in a child process."""

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
        self._lock = threading.Lock()
        self._next = 0
        self._sent = 0
        self._done = 0
        self._loaded_bytes = 0
        self._failure: str | None = None
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._finished: float | None = None if self._extents else self._started
        self._fill_threads: list[int] = []
        concurrency = max(1, min(fill_concurrency, len(self._extents)))
        try:
            self._fill = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _FILL_PROCESS, str(memory.path), str(concurrency)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                bufsize=1,
            )
        except OSError as exc:
            raise LazyMemoryError(f"cannot start the memory prefetch process: {exc}") from exc
        assert self._fill.stdin is not None and self._fill.stdout is not None
        self._requests: IO[str] = self._fill.stdin
        # Its threads are registered as prefetchers before it gets anything to read, so every
        # fill counts as a prefetch in the memory file's record.
        for _ in range(concurrency):
            kind, _, thread_id = self._fill.stdout.readline().strip().partition(" ")
            if kind != "tid":
                self._fill.kill()
                raise LazyMemoryError(f"the memory prefetch process did not start (it said {kind!r})")
            self._fill_threads.append(int(thread_id))
            memory.add_prefetcher(int(thread_id))
        self._reader = threading.Thread(
            target=self._read_replies,
            args=(self._fill.stdout, concurrency),
            name="prefetch-fill",
            daemon=True,
        )
        self._reader.start()
        count = min(workers, len(self._extents)) if source is not None else 0
        self._warming = count
        self._warmers = [
            threading.Thread(target=self._warm, name=f"prefetch-{n}", daemon=True) for n in range(count)
        ]
        for thread in self._warmers:
            thread.start()
        if not self._warmers:
            for extent in self._extents:
                self._send(extent)
            self._close_requests()

    def _take(self) -> Extent | None:
        with self._lock:
            if self._stop.is_set() or self._next >= len(self._extents):
                return None
            self._next += 1
            return self._extents[self._next - 1]

    def _warm(self) -> None:
        """Fetch each extent's chunks into the cache, then hand it to the fill process."""
        assert self._source is not None
        buffer = memoryview(bytearray(max(extent.length_bytes for extent in self._extents)))
        while (extent := self._take()) is not None:
            try:
                self._source.readinto(buffer[: extent.length_bytes], extent.offset)
            except EmberError as exc:
                self._fail(f"prefetching {extent.length_bytes} bytes at offset {extent.offset}: {exc}")
                break
            self._send(extent)
        with self._lock:
            self._warming -= 1
            last = self._warming == 0
        if last:
            self._close_requests()

    def _send(self, extent: Extent) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            try:
                self._requests.write(f"{extent.offset} {extent.length_bytes}\n")
                self._sent += 1
            except (OSError, ValueError):
                self._stop.set()

    def _close_requests(self) -> None:
        with self._lock, contextlib.suppress(OSError):
            self._requests.close()

    def _read_replies(self, replies: IO[str], concurrency: int) -> None:
        for line in replies:
            kind, _, rest = line.strip().partition(" ")
            if kind == "done":
                with self._lock:
                    self._done += 1
                    self._loaded_bytes += int(rest.split()[1])
                    if self._done == len(self._extents):
                        self._finished = time.monotonic()
            elif kind == "fail":
                offset, _, message = rest.partition(" ")
                self._fail(f"prefetching at offset {offset}: {message}")
        replies.close()
        for thread_id in self._fill_threads:
            self._memory.remove_prefetcher(thread_id)

    def _fail(self, message: str) -> None:
        _log.warning("memory prefetch stopped: %s", message)
        with self._lock:
            self._failure = self._failure or message
        self._stop.set()
        self._fill.kill()

    def stats(self) -> PrefetchStats:
        with self._lock:
            end = self._finished if self._finished is not None else time.monotonic()
            return PrefetchStats(
                len(self._extents), self._done, self._loaded_bytes, end - self._started, self._failure
            )

    def wait(self, timeout_s: float) -> bool:
        """Whether every extent was handled (loaded, or the prefetch stopped) within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        for thread in self._warmers:
            thread.join(max(0.0, deadline - time.monotonic()))
        try:
            self._fill.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        self._reader.join(max(0.0, deadline - time.monotonic()))
        return not self._reader.is_alive()

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Stop, end the fill process and wait for it; ``LazyMemoryError`` if it does not end."""
        self._stop.set()
        if self._fill.poll() is None:
            self._fill.kill()
        for thread in self._warmers:
            thread.join(timeout_s)
        try:
            self._fill.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise LazyMemoryError(
                f"the memory prefetch process did not end within {timeout_s:.0f} s: the memory file at "
                f"{self._memory.path} is not answering reads"
            ) from None
        self._reader.join(timeout_s)
        self._close_requests()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

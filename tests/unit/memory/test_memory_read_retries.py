"""The storage retry path under the memory file, without a FUSE mount: what a guest's page fault gets.

``MemoryFileSystem.read`` is what libfuse calls for the guest's READ; below it the overlay
reads an untouched page from the build through ``CountingDevice``, which retries storage
failures with the shared policy (``ember.build.retry``). Driving the callback directly
shows each attempt, which through a mount (``test_prefetch_replay``) only the counters do.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ember.block import CowCache, Overlay
from ember.errors import MappingError, StorageUnreachable
from ember.header import PAGE_SIZE
from ember.memory.filesystem import CountingDevice, MemoryFileSystem, TrafficCounters
from ember.memory.prefetch import AccessRecorder

SIZE = 16 * PAGE_SIZE
DELAYS_S = (0.001, 0.002, 0.003)


class FlakyBase:
    """A build's memory whose first ``failures`` reads fail (every read when negative)."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or StorageUnreachable("gs://bucket", "connection reset by peer")
        self.attempts = 0

    @property
    def size(self) -> int:
        return SIZE

    def readinto(self, buffer: bytearray | memoryview, offset: int) -> int:
        self.attempts += 1
        if self.failures < 0 or self.attempts <= self.failures:
            raise self.error
        view = memoryview(buffer).cast("B")
        for index in range(len(view)):
            view[index] = (offset + index) // PAGE_SIZE + 1
        return len(view)


class Memory:
    def __init__(self, base: FlakyBase, work: Path) -> None:
        self.base = base
        self.counters = TrafficCounters()
        self.cache = CowCache.create(work, "memory", SIZE, block_size=PAGE_SIZE)
        overlay = Overlay(CountingDevice(base, self.counters, DELAYS_S), self.cache)
        self.fs = MemoryFileSystem(
            overlay, "memfile", self.counters, AccessRecorder(SIZE, PAGE_SIZE), threading.Event()
        )

    def read_page(self, page: int) -> bytes:
        buffer = bytearray(PAGE_SIZE)
        assert self.fs.read("/memfile", memoryview(buffer), page * PAGE_SIZE, 0) == PAGE_SIZE
        return bytes(buffer)


@pytest.fixture
def memory_over(tmp_path: Path) -> Iterator[Callable[[FlakyBase], Memory]]:
    made: list[Memory] = []

    def make(base: FlakyBase) -> Memory:
        made.append(Memory(base, tmp_path))
        return made[-1]

    yield make
    for memory in made:
        memory.cache.close()


def test_a_page_whose_storage_read_fails_twice_is_served_on_the_third_attempt(
    memory_over: Callable[[FlakyBase], Memory],
) -> None:
    """A backend that drops two requests must cost the guest a delay, not its sandbox."""
    memory = memory_over(FlakyBase(failures=2))
    assert memory.read_page(3) == bytes([4]) * PAGE_SIZE
    assert memory.base.attempts == 3
    assert memory.counters.base_read_retries == 2
    assert memory.counters.failure is None, "a read that was served is no failure of the sandbox"
    assert memory.read_page(7) == bytes([8]) * PAGE_SIZE
    assert (memory.base.attempts, memory.counters.base_read_retries) == (4, 2), (
        "a read that works at once waits for nothing"
    )


def test_a_page_whose_storage_read_keeps_failing_is_eio_with_the_storage_error_kept(
    memory_over: Callable[[FlakyBase], Memory],
) -> None:
    """After the last retry the guest gets EIO and the owner the storage error, once."""
    memory = memory_over(FlakyBase(failures=-1))
    with pytest.raises(OSError) as failed:
        memory.read_page(5)
    assert failed.value.errno == errno.EIO
    assert memory.base.attempts == len(DELAYS_S) + 1
    assert memory.counters.base_read_retries == len(DELAYS_S)
    first = memory.counters.failure
    assert first is not None and "connection reset by peer" in first and "gs://bucket" in first, first
    assert f"at offset {5 * PAGE_SIZE}" in first

    with pytest.raises(OSError):
        memory.read_page(6)
    assert memory.base.attempts == len(DELAYS_S) + 2, "the guest is lost already: no more waiting"
    assert memory.counters.failure == first, "the first failure is the one that explains the rest"


def test_a_failure_that_is_not_storages_is_not_retried(memory_over: Callable[[FlakyBase], Memory]) -> None:
    """A broken header fails the same way every time: waiting would only delay the error."""
    memory = memory_over(FlakyBase(failures=-1, error=MappingError("no mapping")))
    with pytest.raises(OSError) as failed:
        memory.read_page(0)
    assert failed.value.errno == errno.EIO
    assert memory.base.attempts == 1
    assert memory.counters.base_read_retries == 0

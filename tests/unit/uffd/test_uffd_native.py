"""The page server's native fault loop: the same bytes, states, counts and access order as Python."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from uffd_harness import Op, layer_pattern, run_child, sha, store_chain

from ember.build import BuildFile
from ember.errors import VmError
from ember.storage import ChunkCache, LocalStorage, MemoryStorage, Storage
from ember.uffd import PageServer, PageServerStats, PageState, server
from ember.uffd import _faultloop as faultloop

SMALL = 4096
PAGES = 64
SOCKET = "uffd.sock"
# Generation 1 writes pages 0-39 but zeroes 20-23; generation 2 overwrites some, zeroes
# some (nil mappings over data of its ancestor) and writes a few never written before.
LAYERS = (
    {**{page: True for page in range(40)}, **{page: False for page in range(20, 24)}},
    {3: True, 4: True, 5: True, 10: False, 11: False, 21: True, 33: True, 41: True, 42: True, 60: False},
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="userfaultfd needs root here")


class PythonOnly:
    """The same memfile, but not a ``BuildFile``: the server serves every fault in Python."""

    def __init__(self, inner: BuildFile) -> None:
        self.inner = inner

    @property
    def size(self) -> int:
        return self.inner.size

    def readinto(self, buffer: memoryview, offset: int) -> int:
        return self.inner.readinto(buffer, offset)


def _chain(tmp_path: Path) -> tuple[BuildFile, list[bytes]]:
    return store_chain(LocalStorage(tmp_path / "storage"), SMALL, PAGES, LAYERS)


def _states(server: PageServer) -> dict[int, str]:
    tracker = server.tracker
    states = {page: tracker.state_of(page) for page in range(tracker.page_count)}
    return {page: state.name for page, state in states.items() if state is not PageState.NOT_PRESENT}


def _observed(server: PageServer) -> tuple[dict[int, str], PageServerStats, list[tuple[int, str]]]:
    """What a user of the server sees after a run, with the native share of the faults left out."""
    prefetch = server.recorder.prefetch()
    stats = server.stats
    stats.native_faults = 0
    return _states(server), stats, list(zip(prefetch.indices, prefetch.access_types, strict=True))


def test_the_extension_uses_the_trackers_state_numbers() -> None:
    assert [faultloop.NOT_PRESENT, faultloop.DIRTY, faultloop.ZERO, faultloop.REMOVED, faultloop.CLEAN] == [
        PageState.NOT_PRESENT,
        PageState.DIRTY,
        PageState.ZERO,
        PageState.REMOVED,
        PageState.CLEAN,
    ]


def test_random_reads_over_a_two_generation_local_chain_get_its_exact_bytes_natively(tmp_path: Path) -> None:
    memfile, image = _chain(tmp_path)
    order = random.Random(3).sample(range(PAGES), PAGES)
    with PageServer(memfile, tmp_path / SOCKET) as served:
        outcome = run_child(tmp_path / SOCKET, SMALL, PAGES, [Op("read", page) for page in order])
        assert (outcome.exit_code, outcome.error) == (0, "")
        assert outcome.digests == tuple(sha(image[page]) for page in order)
        stats = served.stats
        assert stats.faults == stats.native_faults == stats.installs == PAGES
        zero_pages = {page for page in range(PAGES) if image[page] == bytes(SMALL)}
        assert stats.zero_installs == len(zero_pages)
        assert _states(served) == {page: "ZERO" if page in zero_pages else "CLEAN" for page in range(PAGES)}
        assert served.recorder.prefetch().indices == tuple(order)


def test_sequential_reads_of_the_chain_are_read_ahead_natively_with_the_same_bytes(tmp_path: Path) -> None:
    memfile, image = _chain(tmp_path)
    with PageServer(memfile, tmp_path / SOCKET, max_copy_bytes=16 * SMALL) as served:
        outcome = run_child(tmp_path / SOCKET, SMALL, PAGES, [Op("read", page) for page in range(PAGES)])
        assert outcome.digests == tuple(sha(data) for data in image)
        stats = served.stats
        assert stats.native_faults == stats.faults < PAGES
        assert stats.bytes_installed == PAGES * SMALL
        assert served.tracker.count(PageState.NOT_PRESENT) == 0


SCRIPTS = {
    "reads, writes, rereads": [
        *(Op("read", page) for page in (5, 0, 1, 2, 3, 4, 22, 50)),
        Op("write", 7, 0x11),
        Op("write", 21, 0x22),
        Op("read", 7),
        Op("read", 0),
        Op("write", 0, 0x33),
    ],
    "removes go through Python": [
        Op("read", 9),
        Op("read", 10),
        Op("remove", 9),
        Op("read", 9),
        Op("remove", 12),
        Op("write", 12, 0x44),
        Op("read", 13),
    ],
    "sequential runs broken by writes": [
        *(Op("read", page) for page in range(8)),
        Op("write", 30, 0x55),
        *(Op("read", page) for page in range(31, 45)),
        *(Op("read", page) for page in range(16, 24)),
    ],
}


@pytest.mark.parametrize("write_protect", [False, True], ids=["missing", "write-protect"])
@pytest.mark.parametrize("script", SCRIPTS, ids=list(SCRIPTS))
def test_the_native_loop_leaves_what_the_python_path_leaves(
    tmp_path: Path, script: str, write_protect: bool
) -> None:
    memfile, _ = _chain(tmp_path)
    results = []
    for source in (memfile, PythonOnly(memfile)):
        served = PageServer(source, tmp_path / SOCKET, write_protect=write_protect, max_copy_bytes=4 * SMALL)
        with served as run:
            outcome = run_child(tmp_path / SOCKET, SMALL, PAGES, SCRIPTS[script], write_protect=write_protect)
            assert (outcome.exit_code, outcome.error) == (0, "")
            results.append((outcome.digests, *_observed(run), run.stats.native_faults))
    (native_digests, *native, native_faults), (python_digests, *python, python_faults) = results
    assert native_digests == python_digests
    assert native == python
    assert native_faults > 0
    assert python_faults == 0


def test_a_full_access_log_hands_faults_to_python_without_losing_their_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "_ACCESS_LOG_ENTRIES", 2)
    memfile, image = _chain(tmp_path)
    order = random.Random(5).sample(range(PAGES), 12)
    with PageServer(memfile, tmp_path / SOCKET) as served:
        outcome = run_child(tmp_path / SOCKET, SMALL, PAGES, [Op("read", page) for page in order])
        assert outcome.digests == tuple(sha(image[page]) for page in order)
        stats = served.stats
        assert 0 < stats.native_faults < stats.faults == len(order)
        assert served.recorder.prefetch().indices == tuple(order)


def test_a_prefault_while_the_native_loop_serves_is_recorded_after_earlier_faults(tmp_path: Path) -> None:
    memfile, image = _chain(tmp_path)

    with PageServer(memfile, tmp_path / SOCKET) as served:

        def prefetch() -> None:
            assert served.prefault(41 * SMALL)

        ops = [Op("read", 3), Op("read", 33), Op("wait", 0), Op("read", 41)]
        outcome = run_child(tmp_path / SOCKET, SMALL, PAGES, ops, while_waiting=prefetch)
        assert outcome.digests == (sha(image[3]), sha(image[33]), sha(layer_pattern(2, 41, SMALL)))
        prefetch_data = served.recorder.prefetch()
        assert list(zip(prefetch_data.indices, prefetch_data.access_types, strict=True)) == [
            (3, "r"),
            (33, "r"),
            (41, "p"),
        ]
        assert served.stats.native_faults == 2


def _memory_chain(storage: Storage) -> tuple[BuildFile, list[bytes]]:
    return store_chain(storage, SMALL, PAGES, LAYERS)


@pytest.mark.parametrize("cached", [False, True], ids=["memory storage", "chunk cache"])
def test_a_build_that_is_not_a_local_file_is_served_by_python(tmp_path: Path, cached: bool) -> None:
    inner = MemoryStorage()
    storage: Storage = ChunkCache(inner, tmp_path / "cache") if cached else inner
    memfile, image = _memory_chain(storage)
    order = random.Random(7).sample(range(PAGES), 24)
    with PageServer(memfile, tmp_path / SOCKET) as served:
        outcome = run_child(tmp_path / SOCKET, SMALL, PAGES, [Op("read", page) for page in order])
        assert outcome.digests == tuple(sha(image[page]) for page in order)
        assert served.stats.faults == len(order)
        assert served.stats.native_faults == 0


def test_a_data_file_truncated_while_serving_fails_through_python_without_retries(tmp_path: Path) -> None:
    memfile, _ = _chain(tmp_path)
    top_data = LocalStorage(tmp_path / "storage").path_of(f"{memfile.build_id}/memfile")

    with PageServer(memfile, tmp_path / SOCKET) as served:
        ops = [Op("read", 0), Op("wait", 0), Op("read", 41)]
        outcome = run_child(
            tmp_path / SOCKET, SMALL, PAGES, ops, while_waiting=lambda: os.truncate(top_data, 0), timeout_s=3
        )
        error = served.wait_failed(5)
        assert outcome.error == "timed out"  # the faulting process waits until it is killed
        assert isinstance(error, VmError)
        assert "truncated" in str(error)
        assert served.stats.source_retries == 0  # a truncated object fails the same way again
        assert served.stats.native_faults == 1

"""The page server against a real userfaultfd registered by another process (facts file 8.7)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from uffd_harness import Op, page_pattern, run_child, sha, store_memfile

from ember.build import BuildFile
from ember.errors import EmberError, MappingError, StorageError, VmError
from ember.uffd import PageServer, PageState

SMALL = 4096
HUGE = 2 << 20
PAGES = 32
DATA_PAGES = (0, 1, 2, 9, 15, 16, 17, 30, 31)
SOCKET = "uffd.sock"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="userfaultfd needs root here")


@pytest.fixture
def memfile(tmp_path: Path) -> BuildFile:
    return store_memfile(tmp_path, SMALL, PAGES, DATA_PAGES)


@pytest.fixture
def server(tmp_path: Path, memfile: BuildFile) -> Iterator[PageServer]:
    with PageServer(memfile, tmp_path / SOCKET) as running:
        yield running


def _states(server: PageServer) -> dict[int, str]:
    """Every page the server has a state for other than NOT_PRESENT."""
    tracker = server.tracker
    states = {page: tracker.state_of(page) for page in range(tracker.page_count)}
    return {page: state.name for page, state in states.items() if state is not PageState.NOT_PRESENT}


def test_reads_at_start_middle_and_end_get_the_builds_bytes_and_fault_only_those_pages(
    tmp_path: Path, server: PageServer
) -> None:
    pages = (0, PAGES // 2, PAGES - 1)
    outcome = run_child(
        tmp_path / SOCKET, SMALL, PAGES, [Op("read", page) for page in pages] + [Op("read", 0)]
    )
    assert (outcome.exit_code, outcome.error) == (0, "")
    assert outcome.digests == tuple(sha(page_pattern(p, SMALL)) for p in (*pages, 0))
    assert _states(server) == {page: "CLEAN" for page in pages}
    assert server.stats.faults == 3
    assert server.recorder.prefetch().indices == pages


def test_reads_of_nil_pages_give_zeros_installed_as_zero_pages(tmp_path: Path, server: PageServer) -> None:
    outcome = run_child(tmp_path / SOCKET, SMALL, PAGES, [Op("read", 5), Op("read", 20)])
    assert outcome.digests == (sha(bytes(SMALL)), sha(bytes(SMALL)))
    assert _states(server) == {5: "ZERO", 20: "ZERO"}
    assert server.stats.zero_installs == 2


def test_written_pages_are_dirty_and_read_back_what_was_written(tmp_path: Path, server: PageServer) -> None:
    ops = [Op("write", 0, 0xAB), Op("write", 16, 0x01), Op("write", 31, 0x7F), Op("read", 16), Op("read", 3)]
    outcome = run_child(tmp_path / SOCKET, SMALL, PAGES, ops)
    assert outcome.digests == (sha(bytes([0x01]) * SMALL), sha(bytes(SMALL)))
    assert _states(server) == {0: "DIRTY", 16: "DIRTY", 31: "DIRTY", 3: "ZERO"}
    prefetch = server.recorder.prefetch()
    assert list(zip(prefetch.indices, prefetch.access_types, strict=True)) == [
        (0, "w"),
        (16, "w"),
        (31, "w"),
        (3, "r"),
    ]


def test_a_removed_page_is_tracked_as_removed_and_faults_again_as_zeros(
    tmp_path: Path, server: PageServer
) -> None:
    ops = [
        Op("read", 9),
        Op("read", 15),
        Op("remove", 9),
        Op("read", 16),
    ]  # the last fault waits for the remove
    run_child(tmp_path / SOCKET, SMALL, PAGES, ops)
    assert _states(server) == {9: "REMOVED", 15: "CLEAN", 16: "CLEAN"}
    assert server.stats.removes == 1
    dirty, empty = server.tracker.export()
    assert (dirty.tolist(), empty.tolist()) == ([], [9])


def test_a_removed_page_read_again_is_served_zeros(tmp_path: Path, server: PageServer) -> None:
    outcome = run_child(tmp_path / SOCKET, SMALL, PAGES, [Op("read", 9), Op("remove", 9), Op("read", 9)])
    assert outcome.digests == (sha(page_pattern(9, SMALL)), sha(bytes(SMALL)))
    assert _states(server) == {9: "ZERO"}


def test_with_write_protection_a_read_page_written_later_becomes_dirty(
    tmp_path: Path, memfile: BuildFile
) -> None:
    with PageServer(memfile, tmp_path / SOCKET, write_protect=True) as server:
        ops = [Op("read", 1), Op("read", 2), Op("write", 2, 0x55), Op("read", 2), Op("read", 4)]
        outcome = run_child(tmp_path / SOCKET, SMALL, PAGES, ops, write_protect=True)
        assert outcome.error == ""
        assert outcome.digests[-2:] == (sha(bytes([0x55]) * SMALL), sha(bytes(SMALL)))
        assert _states(server) == {1: "CLEAN", 2: "DIRTY", 4: "ZERO"}


def test_sequential_reads_are_served_with_fewer_faults_and_the_same_bytes(
    tmp_path: Path, memfile: BuildFile
) -> None:
    with PageServer(memfile, tmp_path / SOCKET, max_copy_bytes=8 * SMALL) as server:
        outcome = run_child(tmp_path / SOCKET, SMALL, PAGES, [Op("read", page) for page in range(PAGES)])
        expected = [page_pattern(p, SMALL) if p in DATA_PAGES else bytes(SMALL) for p in range(PAGES)]
        assert outcome.digests == tuple(sha(data) for data in expected)
        assert server.stats.faults < PAGES
        assert server.stats.bytes_installed == PAGES * SMALL
        assert server.tracker.count(PageState.NOT_PRESENT) == 0


def test_a_region_at_a_memfile_offset_is_served_from_that_offset(tmp_path: Path, server: PageServer) -> None:
    outcome = run_child(tmp_path / SOCKET, SMALL, 8, [Op("read", 0), Op("read", 1)], region_offset=16 * SMALL)
    assert outcome.digests == (sha(page_pattern(16, SMALL)), sha(page_pattern(17, SMALL)))
    assert _states(server) == {16: "CLEAN", 17: "CLEAN"}


def test_prefault_installs_a_page_the_guest_then_reads_without_a_fault(
    tmp_path: Path, server: PageServer
) -> None:
    answers: list[bool] = []

    def prefetch() -> None:
        answers.extend(server.prefault(offset) for offset in (30 * SMALL, 30 * SMALL + 8, 0))

    ops = [Op("read", 0), Op("wait", 0), Op("read", 30)]
    outcome = run_child(tmp_path / SOCKET, SMALL, PAGES, ops, while_waiting=prefetch)
    assert outcome.digests == (sha(page_pattern(0, SMALL)), sha(page_pattern(30, SMALL)))
    assert answers == [True, False, False]
    assert server.stats.faults == 1
    assert _states(server) == {0: "CLEAN", 30: "CLEAN"}
    prefetch_data = server.recorder.prefetch()
    assert list(zip(prefetch_data.indices, prefetch_data.access_types, strict=True)) == [(0, "r"), (30, "p")]


def test_a_prefault_after_the_guest_process_exited_installs_nothing(
    tmp_path: Path, server: PageServer
) -> None:
    run_child(tmp_path / SOCKET, SMALL, PAGES, [Op("read", 0)])
    assert server.prefault(30 * SMALL) is False
    assert server.tracker.state_of(30) is PageState.NOT_PRESENT
    assert server.error is None


class FlakySource:
    """A memfile whose reads fail ``failures`` times before succeeding (forever when negative).

    The failure is a storage error (a backend that may answer next time) unless ``error`` says otherwise.
    """

    def __init__(self, inner: BuildFile, failures: int, error: type[EmberError] = StorageError) -> None:
        self.inner = inner
        self.failures = failures
        self.error = error
        self.calls = 0

    @property
    def size(self) -> int:
        return self.inner.size

    def readinto(self, buffer: memoryview, offset: int) -> int:
        self.calls += 1
        if self.failures < 0 or self.calls <= self.failures:
            raise self.error(f"storage hiccup #{self.calls}")
        return self.inner.readinto(buffer, offset)


def test_a_failing_memfile_read_is_retried_and_then_served(tmp_path: Path, memfile: BuildFile) -> None:
    source = FlakySource(memfile, failures=2)
    with PageServer(source, tmp_path / SOCKET) as server:
        outcome = run_child(tmp_path / SOCKET, SMALL, PAGES, [Op("read", 1)])
        assert outcome.digests == (sha(page_pattern(1, SMALL)),)
        assert server.stats.source_retries == 2
        assert server.error is None


def test_a_memfile_read_that_keeps_failing_stops_the_server_with_an_error_to_show(
    tmp_path: Path, memfile: BuildFile
) -> None:
    reported: list[EmberError] = []
    source = FlakySource(memfile, failures=-1)
    with PageServer(source, tmp_path / SOCKET, on_error=reported.append) as server:
        outcome = run_child(tmp_path / SOCKET, SMALL, PAGES, [Op("read", 2)], timeout_s=3)
        error = server.wait_failed(5)
    assert outcome.error == "timed out"  # the faulting process waits until it is killed
    assert source.calls == 4
    assert isinstance(error, VmError)
    assert reported == [error]
    assert f"memfile offset {2 * SMALL}" in str(error)
    assert "storage hiccup #4" in str(error)
    assert "stop it" in str(error)


def test_a_memfile_read_failing_for_a_reason_a_retry_cannot_cure_stops_the_server_at_once(
    tmp_path: Path, memfile: BuildFile
) -> None:
    source = FlakySource(memfile, failures=-1, error=MappingError)
    with PageServer(source, tmp_path / SOCKET) as server:
        outcome = run_child(tmp_path / SOCKET, SMALL, PAGES, [Op("read", 2)], timeout_s=3)
        error = server.wait_failed(5)
    assert outcome.error == "timed out"
    assert source.calls == 1
    assert server.stats.source_retries == 0
    assert isinstance(error, VmError)
    assert "storage hiccup #1" in str(error)


def _held(socket_path: Path) -> dict[int, str]:
    """This process's fds on the kinds of object a page server test creates: ``{fd: target}``.

    Userfaultfds, pipes (the server's wake pipe) and unix sockets bound at ``socket_path``
    (the listener and the connection it accepted; ``/proc/net/unix`` keeps their path even
    once the name is unlinked). Counting every fd of the process instead also counts what
    other threads open and close meanwhile (a loopback server of an earlier test answering
    a late keep-alive request), which made the count flaky.
    """
    with open("/proc/net/unix") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    bound = {f"socket:[{row[6]}]" for row in rows if len(row) > 7 and row[7] == str(socket_path)}
    held = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor, already closed
            continue
        if target == "anon_inode:[userfaultfd]" or target.startswith("pipe:") or target in bound:
            held[int(name)] = target
    return held


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not JSON"),
        (b'{"base_host_virt_addr": 0}', "JSON array"),
        (b'[{"base_host_virt_addr": 4096, "size": 4096, "offset": 0, "page_size": 8192}]', "page size 8192"),
        (b'[{"base_host_virt_addr": -4096, "size": 4096, "offset": 0, "page_size": 4096}]', "unsigned"),
    ],
)
def test_a_bogus_regions_message_is_rejected_without_leaking_the_fd(
    tmp_path: Path, memfile: BuildFile, payload: bytes, reason: str
) -> None:
    before = _held(tmp_path / SOCKET)
    server = PageServer(memfile, tmp_path / SOCKET)
    server.start()
    outcome = run_child(tmp_path / SOCKET, SMALL, PAGES, [], payload=payload)
    error = server.wait_failed(5)
    server.close()
    assert outcome.error == ""
    assert isinstance(error, VmError)
    assert reason in str(error)
    after = _held(tmp_path / SOCKET)
    assert {fd: target for fd, target in after.items() if before.get(fd) != target} == {}
    assert not (tmp_path / SOCKET).exists()


def test_regions_larger_than_the_memfile_are_refused(tmp_path: Path, server: PageServer) -> None:
    run_child(tmp_path / SOCKET, SMALL, PAGES, [], region_offset=SMALL)
    error = server.wait_failed(5)
    assert isinstance(error, VmError)
    assert "the memfile holds" in str(error)


def test_no_connection_within_the_accept_deadline_is_an_error(tmp_path: Path, memfile: BuildFile) -> None:
    with PageServer(memfile, tmp_path / SOCKET, accept_timeout_s=0.1) as server:
        error = server.wait_failed(5)
        assert isinstance(error, VmError)
        assert "nothing connected" in str(error)
        with pytest.raises(VmError, match="nothing connected"):
            server.wait_ready(1)


def test_a_server_closed_before_anyone_connects_stops_quietly(tmp_path: Path, memfile: BuildFile) -> None:
    server = PageServer(memfile, tmp_path / SOCKET)
    server.start()
    assert (tmp_path / SOCKET).stat().st_mode & 0o777 == 0o777
    server.close()
    assert server.error is None
    assert not (tmp_path / SOCKET).exists()


@pytest.fixture
def hugepages() -> Iterator[None]:
    """Reserve 8 hugetlb pages for the test, then restore the host's setting."""
    setting = Path("/proc/sys/vm/nr_hugepages")
    old = setting.read_text()
    try:
        setting.write_text(str(int(old) + 8))
    except OSError as exc:
        pytest.skip(f"cannot reserve hugepages: {exc}")
    try:
        free = next(
            line for line in Path("/proc/meminfo").read_text().splitlines() if "HugePages_Free" in line
        )
        if int(free.split()[1]) < 8:
            pytest.skip("the host could not reserve 8 free 2 MiB pages")
        yield
    finally:
        setting.write_text(old)


@pytest.mark.usefixtures("hugepages")
def test_hugepage_regions_are_served_whole_2_mib_pages(tmp_path: Path) -> None:
    memfile = store_memfile(tmp_path, HUGE, 8, (0, 4, 7))
    with PageServer(memfile, tmp_path / SOCKET) as server:
        ops = [Op("read", 0), Op("read", 4), Op("read", 7), Op("read", 2), Op("write", 1, 3), Op("read", 1)]
        outcome = run_child(tmp_path / SOCKET, HUGE, 8, ops, hugetlb=True)
        assert outcome.error == ""
        expected = [
            page_pattern(0, HUGE),
            page_pattern(4, HUGE),
            page_pattern(7, HUGE),
            bytes(HUGE),
            bytes([3]) * HUGE,
        ]
        assert outcome.digests == tuple(sha(data) for data in expected)
        assert _states(server) == {0: "CLEAN", 1: "DIRTY", 2: "CLEAN", 4: "CLEAN", 7: "CLEAN"}
        assert server.stats.bytes_installed == 5 * HUGE

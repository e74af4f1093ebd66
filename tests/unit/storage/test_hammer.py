from __future__ import annotations

import itertools
import re

from ember.storage import MemoryStorage, gantt_files, hammer, summary_rows

MIB = 1 << 20
KEY = "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d/memfile"


class RecordingStorage(MemoryStorage):
    """Remembers every range read, to check what each scenario asked for."""

    def __init__(self) -> None:
        super().__init__("hammer")
        self.ranges: list[tuple[int, int]] = []

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        self.ranges.append((offset, length))
        return super().read_range(key, offset, length)


def _store(size_bytes: int) -> RecordingStorage:
    store = RecordingStorage()
    store.put(KEY, bytes(size_bytes))
    return store


def test_scenario_one_reads_everything_sequentially_and_two_reads_whole_chunks() -> None:
    store = _store(10 * MIB + 5)
    report = hammer(store, KEY)
    first, second = report.scenarios
    assert [(read.offset, read.length) for read in first.reads] == [
        (0, 4 * MIB),
        (4 * MIB, 4 * MIB),
        (8 * MIB, 2 * MIB + 5),
    ]
    assert sorted((read.offset, read.length) for read in second.reads) == [(0, 4 * MIB), (4 * MIB, 4 * MIB)]
    assert len(store.ranges) == 5
    for earlier, later in itertools.pairwise(first.reads):
        assert earlier.end_s <= later.start_s
    assert report.size_bytes == 10 * MIB + 5


def test_summary_has_one_row_per_scenario_with_read_counts() -> None:
    rows = summary_rows(hammer(_store(9 * MIB), KEY))
    assert [(row.scenario, row.count) for row in rows] == [("Scenario 1", 3), ("Scenario 2", 2)]
    for row in rows:
        assert 0 <= row.p50_chunk_s <= row.total_s
        assert 0 <= row.mean_chunk_s <= row.total_s


def test_small_object_has_no_whole_chunk_reads() -> None:
    rows = summary_rows(hammer(_store(100), KEY))
    assert [row.count for row in rows] == [1, 0]
    assert rows[1].mean_chunk_s == 0.0


def test_gantt_files_have_a_header_a_section_and_one_task_per_read() -> None:
    files = gantt_files(hammer(_store(9 * MIB), KEY))
    assert sorted(files) == ["scenario1.mmd", "scenario2.mmd"]
    lines = files["scenario1.mmd"].splitlines()
    assert lines[0] == "gantt"
    assert "    dateFormat x" in lines
    assert "    section Scenario 1" in lines
    tasks = [line for line in lines if line.strip().startswith("Chunk")]
    assert [re.fullmatch(r"    Chunk (\d+) : (\d+), (\d+)", task) is not None for task in tasks] == [True] * 3
    for task in tasks:
        start_ms, end_ms = (int(value) for value in task.split(":")[1].split(","))
        assert end_ms > start_ms
    second_tasks = [line for line in files["scenario2.mmd"].splitlines() if line.strip().startswith("Chunk")]
    assert sorted(task.split(":")[0].strip() for task in second_tasks) == ["Chunk 0", "Chunk 1"]


def test_an_exact_multiple_of_4_mib_reads_the_same_ranges_in_both_scenarios() -> None:
    first, second = hammer(_store(8 * MIB), KEY).scenarios
    assert [(r.offset, r.length) for r in first.reads] == sorted((r.offset, r.length) for r in second.reads)

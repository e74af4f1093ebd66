"""Range-read benchmark of one object (the library half of ``hammer-file``, facts 7.8).

Scenario 1 reads the whole object front to back in 4 MiB ranges, one at a time.
Scenario 2 reads the floor(size / 4 MiB) whole chunks, 10 at a time.
Each read records its start and end relative to the start of its scenario, which is what
the Mermaid Gantt files draw::

    gantt
        title Scenario 1: sequential 4 MiB reads
        dateFormat x
        axisFormat %S.%L
        section Scenario 1
        Chunk 0 : 0, 12
        Chunk 1 : 12, 25
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ember.storage.base import Storage

HAMMER_CHUNK_SIZE = 4 << 20
CONCURRENCY = 10
SCENARIO_FILES = ("scenario1.mmd", "scenario2.mmd")


@dataclass(frozen=True)
class ReadTiming:
    """One range read; times in seconds from the start of its scenario."""

    index: int
    offset: int
    length: int
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    title: str
    reads: tuple[ReadTiming, ...]
    total_s: float


@dataclass(frozen=True)
class SummaryRow:
    """One line of the ``Scenario | Mean Chunk | P50 Chunk | Total Time | count`` table."""

    scenario: str
    mean_chunk_s: float
    p50_chunk_s: float
    total_s: float
    count: int


@dataclass(frozen=True)
class HammerReport:
    key: str
    size_bytes: int
    scenarios: tuple[ScenarioResult, ScenarioResult]


def hammer(storage: Storage, key: str, *, concurrency: int = CONCURRENCY) -> HammerReport:
    """Run both scenarios against ``key``; storage errors propagate as ember errors."""
    size_bytes = storage.size(key)
    sequential = [
        (index, offset, min(HAMMER_CHUNK_SIZE, size_bytes - offset))
        for index, offset in enumerate(range(0, size_bytes, HAMMER_CHUNK_SIZE))
    ]
    whole_chunks = [
        (index, index * HAMMER_CHUNK_SIZE, HAMMER_CHUNK_SIZE)
        for index in range(size_bytes // HAMMER_CHUNK_SIZE)
    ]
    return HammerReport(
        key,
        size_bytes,
        (
            _run(storage, key, "Scenario 1", "sequential 4 MiB reads", sequential, 1),
            _run(storage, key, "Scenario 2", f"4 MiB reads x{concurrency}", whole_chunks, concurrency),
        ),
    )


def _run(
    storage: Storage, key: str, name: str, title: str, plan: list[tuple[int, int, int]], concurrency: int
) -> ScenarioResult:
    started = time.perf_counter()

    def read(item: tuple[int, int, int]) -> ReadTiming:
        index, offset, length = item
        start = time.perf_counter() - started
        storage.read_range(key, offset, length)
        return ReadTiming(index, offset, length, start, time.perf_counter() - started)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        reads = tuple(pool.map(read, plan))
    return ScenarioResult(name, title, reads, time.perf_counter() - started)


def render_gantt(result: ScenarioResult) -> str:
    """Mermaid Gantt text for one scenario: one ``Chunk i : startMs, endMs`` task per read."""
    lines = [
        "gantt",
        f"    title {result.name}: {result.title}",
        "    dateFormat x",
        "    axisFormat %S.%L",
        f"    section {result.name}",
    ]
    for read in result.reads:
        start_ms = round(read.start_s * 1000)
        # A zero-length task does not render; give sub-millisecond reads one millisecond.
        end_ms = max(round(read.end_s * 1000), start_ms + 1)
        lines.append(f"    Chunk {read.index} : {start_ms}, {end_ms}")
    return "\n".join(lines) + "\n"


def gantt_files(report: HammerReport) -> dict[str, str]:
    """File name -> Mermaid text: ``scenario1.mmd`` and ``scenario2.mmd``."""
    pairs = zip(SCENARIO_FILES, report.scenarios, strict=True)
    return {file_name: render_gantt(result) for file_name, result in pairs}


def summary_rows(report: HammerReport) -> list[SummaryRow]:
    """Per-scenario mean and median read time, wall time and read count (zeros for no reads)."""
    rows = []
    for result in report.scenarios:
        durations = [read.duration_s for read in result.reads]
        rows.append(
            SummaryRow(
                result.name,
                statistics.fmean(durations) if durations else 0.0,
                statistics.median(durations) if durations else 0.0,
                result.total_s,
                len(durations),
            )
        )
    return rows

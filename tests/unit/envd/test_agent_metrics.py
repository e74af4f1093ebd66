"""/metrics figures from /proc text: memory as ``free`` counts it, CPU busy share between samples."""

from __future__ import annotations

import pytest

from ember.envd.agent import metrics

MEMINFO = """MemTotal:        2000000 kB
MemFree:          500000 kB
MemAvailable:    1200000 kB
Buffers:           10000 kB
Cached:           300000 kB
SwapCached:            0 kB
SReclaimable:      40000 kB
HugePages_Total:       0
garbage line
"""
STAT_BEFORE = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 100 0 50 800 50 0 0 0 0 0\nintr 1 2 3\n"
STAT_AFTER = "cpu  160 0 70 900 70 0 0 0 0 0\ncpu0 160 0 70 900 70 0 0 0 0 0\nintr 1 2 3\n"


def test_meminfo_is_parsed_to_bytes() -> None:
    parsed = metrics.parse_meminfo(MEMINFO)
    assert parsed["MemTotal"] == 2_000_000 * 1024
    assert parsed["HugePages_Total"] == 0
    assert "garbage line" not in parsed


def test_memory_used_excludes_free_buffers_and_reclaimable_cache() -> None:
    total, used, cache = metrics.memory_figures(metrics.parse_meminfo(MEMINFO))
    assert total == 2_000_000 * 1024
    assert cache == (300_000 + 40_000) * 1024
    assert used == (2_000_000 - 500_000 - 10_000 - 340_000) * 1024


def test_cpu_times_count_idle_and_iowait_as_not_busy() -> None:
    assert metrics.parse_cpu_times(STAT_BEFORE) == (150, 1000)
    assert metrics.parse_cpu_times("intr 1\n") == (0, 0)


def test_busy_percent_between_two_samples() -> None:
    before, after = metrics.parse_cpu_times(STAT_BEFORE), metrics.parse_cpu_times(STAT_AFTER)
    assert metrics.busy_percent(before, after) == pytest.approx(100 * 80 / 200)
    assert metrics.busy_percent(after, after) == 0.0
    assert metrics.busy_percent((0, 0), (1, 3)) == 33.33


def test_sampler_reports_every_field_and_measures_cpu_from_the_previous_call() -> None:
    files = {"/proc/stat": STAT_BEFORE, "/proc/meminfo": MEMINFO}
    sampler = metrics.MetricsSampler(read=lambda path: files.get(path, ""))
    files["/proc/stat"] = STAT_AFTER
    sample = sampler.sample()
    assert sample["cpu_used_pct"] == 40.0
    assert sampler.sample()["cpu_used_pct"] == 0.0
    assert set(sample) == {
        "ts", "cpu_count", "cpu_used_pct", "mem_total", "mem_used", "mem_cache", "mem_total_mib",
        "mem_used_mib", "disk_used", "disk_total",
    }  # fmt: skip
    assert sample["mem_total_mib"] == 2_000_000 * 1024 // (1 << 20)
    assert isinstance(sample["disk_total"], int) and sample["disk_total"] > 0


def test_sampler_without_proc_reports_zeros_rather_than_failing() -> None:
    sample = metrics.MetricsSampler(read=lambda path: "", disk_path="/nonexistent/ember").sample()
    assert (sample["mem_total"], sample["cpu_used_pct"], sample["disk_total"]) == (0, 0.0, 0)

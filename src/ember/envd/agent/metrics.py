"""``GET /metrics``: the guest's CPU, memory and root disk, as E2B's envd reports them.

The reply is one JSON object (the control plane reads it to answer the SDK's
``get_metrics``)::

    ts             Unix time, seconds
    cpu_count      logical CPUs
    cpu_used_pct   busy share of all CPUs since the previous /metrics call (or the agent's
                   start), percent rounded to 2 decimals
    mem_total      bytes (MemTotal)
    mem_used       bytes: total - free - buffers - cache, as ``free`` counts it
    mem_cache      bytes: page cache + reclaimable slab (Cached + SReclaimable)
    disk_used      bytes of / in use: total - space available to unprivileged users
    disk_total     bytes of /
    mem_total_mib, mem_used_mib   the same in MiB (kept for older readers)

CPU time comes from the first line of ``/proc/stat``: total = user + nice + system + idle
+ iowait + irq + softirq + steal (guest time is already inside user), busy = total - idle
- iowait.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

_MIB = 1 << 20


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as bytes by field name (``MemTotal`` ...); malformed lines are skipped."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, separator, rest = line.partition(":")
        words = rest.split()
        if not separator or not words or not words[0].isdigit():
            continue
        unit = 1024 if len(words) > 1 and words[1].lower() == "kb" else 1
        fields[key.strip()] = int(words[0]) * unit
    return fields


def memory_figures(meminfo: dict[str, int]) -> tuple[int, int, int]:
    """(total, used, cache) in bytes from parsed meminfo."""
    total = meminfo.get("MemTotal", 0)
    cache = meminfo.get("Cached", 0) + meminfo.get("SReclaimable", 0)
    used = total - meminfo.get("MemFree", 0) - meminfo.get("Buffers", 0) - cache
    return total, max(0, used), cache


def parse_cpu_times(text: str) -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs from ``/proc/stat``; (0, 0) when it has no cpu line."""
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == "cpu":
            ticks = [int(word) for word in words[1:9] if word.isdigit()]
            ticks += [0] * (8 - len(ticks))
            total = sum(ticks)
            idle = ticks[3] + ticks[4]
            return total - idle, total
    return 0, 0


def busy_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Percent of CPU time that was busy between two (busy, total) samples, rounded to 2 decimals."""
    busy = after[0] - before[0]
    total = after[1] - before[1]
    if total <= 0:
        return 0.0
    return round(min(100.0, max(0.0, 100.0 * busy / total)), 2)


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


class MetricsSampler:
    """Samples the guest; every method is thread-safe. ``read`` returns the file's text or ''."""

    def __init__(self, read: Callable[[str], str] = _read, disk_path: str = "/") -> None:
        self._read = read
        self._disk_path = disk_path
        self._lock = threading.Lock()
        self._last_cpu = parse_cpu_times(read("/proc/stat"))

    def cpu_used_pct(self) -> float:
        sample = parse_cpu_times(self._read("/proc/stat"))
        with self._lock:
            before, self._last_cpu = self._last_cpu, sample
        return busy_percent(before, sample)

    def sample(self) -> dict[str, object]:
        total, used, cache = memory_figures(parse_meminfo(self._read("/proc/meminfo")))
        try:
            disk = os.statvfs(self._disk_path)
            disk_total = disk.f_blocks * disk.f_frsize
            disk_used = disk_total - disk.f_bavail * disk.f_frsize
        except OSError:
            disk_total = disk_used = 0
        return {
            "ts": int(time.time()),
            "cpu_count": os.cpu_count() or 1,
            "cpu_used_pct": self.cpu_used_pct(),
            "mem_total": total,
            "mem_used": used,
            "mem_cache": cache,
            "mem_total_mib": total // _MIB,
            "mem_used_mib": used // _MIB,
            "disk_used": disk_used,
            "disk_total": disk_total,
        }

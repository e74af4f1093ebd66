"""What ``InfoService/ServiceInfo`` reports about the machine: CPU, memory, disks, hugepages.

Read from ``/proc`` and ``statvfs`` at each call, so the control plane's 20 s sync sees the
node as it is. CPU use is the busy share of all CPUs since the previous call (the first
call measures over a short sample).
"""

from __future__ import annotations

import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_SAMPLE_S = 0.1


@dataclass(frozen=True)
class MachineInfo:
    cpu_architecture: str
    cpu_family: str
    cpu_model: str
    cpu_model_name: str
    cpu_flags: tuple[str, ...]


@dataclass(frozen=True)
class DiskUsage:
    mount_point: str
    device: str
    filesystem_type: str
    used_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class MemoryUsage:
    total_bytes: int
    used_bytes: int
    hugepages_total: int
    hugepages_free: int
    hugepages_reserved: int
    hugepage_size_bytes: int


def machine_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> MachineInfo:
    """The first CPU's identity, as the control plane matches builds to CPU-compatible nodes."""
    fields: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    return MachineInfo(
        cpu_architecture=platform.machine(),
        cpu_family=fields.get("cpu family", ""),
        cpu_model=fields.get("model", ""),
        cpu_model_name=fields.get("model name", ""),
        cpu_flags=tuple(fields.get("flags", "").split()),
    )


def memory_usage(meminfo: Path = Path("/proc/meminfo")) -> MemoryUsage:
    values: dict[str, int] = {}
    for line in meminfo.read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
            values[key] = int(parts[0]) * scale
    total = values.get("MemTotal", 0)
    return MemoryUsage(
        total_bytes=total,
        used_bytes=total - values.get("MemAvailable", total),
        hugepages_total=values.get("HugePages_Total", 0),
        hugepages_free=values.get("HugePages_Free", 0),
        hugepages_reserved=values.get("HugePages_Rsvd", 0),
        hugepage_size_bytes=values.get("Hugepagesize", 0),
    )


def disk_usage(paths: list[Path]) -> list[DiskUsage]:
    """One entry per distinct file system holding one of ``paths`` (those that exist)."""
    mounts = _mount_table()
    seen: set[str] = set()
    found = []
    for path in paths:
        target = _existing_parent(path)
        if target is None:
            continue
        mount_point, device, fs_type = _mount_of(target, mounts)
        if mount_point in seen:
            continue
        seen.add(mount_point)
        stats = os.statvfs(target)
        total = stats.f_blocks * stats.f_frsize
        found.append(DiskUsage(mount_point, device, fs_type, total - stats.f_bfree * stats.f_frsize, total))
    return found


def _existing_parent(path: Path) -> Path | None:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None


def _mount_table() -> list[tuple[str, str, str]]:
    entries = []
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split()
            separator = fields.index("-")
            entries.append((fields[4], fields[separator + 2], fields[separator + 1]))
    return entries


def _mount_of(path: Path, mounts: list[tuple[str, str, str]]) -> tuple[str, str, str]:
    resolved = str(path.resolve())
    best = ("/", "", "")
    for point, device, fs_type in mounts:
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, device, fs_type)
    return best


class CpuMeter:
    """Busy share of all CPUs between consecutive ``percent`` calls."""

    def __init__(self, stat: Path = Path("/proc/stat")) -> None:
        self._stat = stat
        self._lock = threading.Lock()
        self._last: tuple[int, int] | None = None

    def _read(self) -> tuple[int, int]:
        fields = [int(value) for value in self._stat.read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    def percent(self) -> int:
        with self._lock:
            if self._last is None:
                self._last = self._read()
                time.sleep(_SAMPLE_S)
            total, idle = self._read()
            last_total, last_idle = self._last
            self._last = (total, idle)
        elapsed = total - last_total
        return round(100 * (elapsed - (idle - last_idle)) / elapsed) if elapsed > 0 else 0

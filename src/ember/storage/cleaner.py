"""Evict cold builds from a shared chunk cache (the library half of ``clean-nfs-cache``, facts 7.7).

What is scanned, in the cache layout of ``ember.storage.cache``::

    <root>/<build uuid>/                       one candidate per build directory
        memfile.zstd/ memfile/ memfile.lz4/    data dirs probed (same for rootfs.ext4)
            000000000003-4194304.bin           chunk: decimal size after the last '-'
            0000000000a00000-1f3c2.frm         frame: hex size after the last '-'
        memfile.header/ snapfile/ ...          non-chunk files: a flat 1 MiB per build

A build's coldness is the newest access time among a random sample of its chunk files
(builds without chunks are the coldest, size 0). Builds are deleted coldest first until
the byte target is met, and never one accessed or created within the grace period.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from ember.errors import StorageError, UsageError

NON_CHUNK_CHARGE_BYTES = 1 << 20
DATA_DIR_NAMES = tuple(
    base + suffix for base in ("memfile", "rootfs.ext4") for suffix in (".zstd", "", ".lz4")
)
_CHUNK_NAME = re.compile(r"^[0-9]+-([0-9]+)\.bin$")
_FRAME_NAME = re.compile(r"^[0-9a-f]+-([0-9a-f]+)\.frm$")

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CleanOptions:
    """Knobs of a clean run; defaults are those of the orchestrator's tool."""

    target_bytes: int = 0
    disk_usage_target_percent: float = 90.0
    dry_run: bool = True
    grace_s: float = 48 * 3600.0
    sample_min: int = 8
    sample_pct: float = 10.0
    sample_max: int = 64
    build_sample_min: int = 0
    build_sample_pct: float = 100.0
    build_sample_max: int = 0
    max_concurrent_scan: int = 32
    max_concurrent_stat: int = 32
    max_concurrent_delete: int = 16


@dataclass(frozen=True)
class BuildUsage:
    """One scanned build: estimated bytes and newest sampled access (``None``: no chunks)."""

    build_id: str
    path: Path
    size_bytes: int
    chunk_count: int
    last_access_s: float | None


@dataclass(frozen=True)
class CleanReport:
    """Outcome of a clean run; in a dry run ``deleted`` is 0 and the estimate is what would go."""

    root: Path
    target_bytes: int
    dry_run: bool
    builds_scanned: int
    selected: tuple[BuildUsage, ...]
    deleted: int
    bytes_freed_estimate: int


def sample_count(total: int, pct: float, minimum: int, maximum: int) -> int:
    """clamp(ceil(total * pct / 100), minimum, maximum, total); ``maximum`` 0 means no cap."""
    count = max(math.ceil(total * pct / 100), minimum)
    if maximum > 0:
        count = min(count, maximum)
    return min(count, total)


def birth_time(path: Path) -> float:
    """When ``path`` was created, or the closest safe stand-in.

    Python 3.11 exposes ``st_birthtime`` only on BSDs/macOS; on Linux the birth time needs
    ``statx``, which its ``os`` module does not wrap. The fallback is ``st_ctime``: for a
    directory it moves forward whenever an entry is added or removed, so it is never
    earlier than the birth time. A later time only makes a build look younger, so the
    grace check errs towards keeping builds, never towards deleting a new one.
    """
    status = path.stat()
    return float(getattr(status, "st_birthtime", status.st_ctime))


def clean_cache(
    root: Path, options: CleanOptions, *, now_s: float | None = None, rng: random.Random | None = None
) -> CleanReport:
    """Delete (or, by default, only select) the coldest builds until the byte target is met."""
    now = time.time() if now_s is None else now_s
    chooser = rng or random.Random()
    check_cache_root(root)
    target = options.target_bytes if options.target_bytes > 0 else _bytes_over_target(root, options)
    if target <= 0:
        return CleanReport(root, target, options.dry_run, 0, (), 0, 0)
    build_dirs = _list_build_dirs(root)
    keep = sample_count(
        len(build_dirs), options.build_sample_pct, options.build_sample_min, options.build_sample_max
    )
    if keep < len(build_dirs):
        build_dirs = chooser.sample(build_dirs, keep)
    cutoff = now - options.grace_s
    stat_slots = threading.BoundedSemaphore(max(1, options.max_concurrent_stat))
    seeds = [chooser.random() for _ in build_dirs]
    with ThreadPoolExecutor(max_workers=max(1, options.max_concurrent_scan)) as pool:
        scanned = list(
            pool.map(
                lambda item: _scan_build(item[0], options, cutoff, stat_slots, random.Random(item[1])),
                zip(build_dirs, seeds, strict=True),
            )
        )
    candidates = sorted(
        (usage for usage in scanned if usage is not None),
        key=lambda usage: -math.inf if usage.last_access_s is None else usage.last_access_s,
    )
    selected = _select(candidates, target, cutoff)
    deleted = 0 if options.dry_run else _delete(selected, options.max_concurrent_delete)
    if options.dry_run:
        for usage in selected:
            _log.info("would remove build dir (dry run): %s (%d bytes)", usage.path, usage.size_bytes)
    estimate = sum(usage.size_bytes for usage in selected)
    _log.info("clean complete: deleted %d builds, ~%d bytes freed", deleted, estimate)
    return CleanReport(root, target, options.dry_run, len(build_dirs), tuple(selected), deleted, estimate)


def check_cache_root(root: Path) -> None:
    """Refuse a directory that is not a chunk cache, so a typo cannot delete arbitrary trees."""
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory: pass the chunk cache root (SNAPSHOT_CACHE_DIR)")
    entries = list(root.iterdir())
    if not entries:
        return
    for entry in entries:
        if _is_uuid(entry.name) and any((entry / name).is_dir() for name in DATA_DIR_NAMES):
            return
    raise UsageError(
        f"{root} does not look like a chunk cache (no <build uuid>/memfile or rootfs.ext4 directory): "
        "pass the chunk cache root"
    )


def _is_uuid(name: str) -> bool:
    try:
        UUID(name)
    except ValueError:
        return False
    return True


def _bytes_over_target(root: Path, options: CleanOptions) -> int:
    try:
        usage = os.statvfs(root)
    except OSError as exc:
        raise StorageError(f"cannot read disk usage of {root}: {exc}; pass a byte target instead") from exc
    total = usage.f_blocks * usage.f_frsize
    used = total - usage.f_bfree * usage.f_frsize
    return used - int(total * options.disk_usage_target_percent / 100)


def _list_build_dirs(root: Path) -> list[Path]:
    return sorted(entry for entry in root.iterdir() if _is_uuid(entry.name) and entry.is_dir())


def _scan_build(
    build_dir: Path,
    options: CleanOptions,
    cutoff: float,
    stat_slots: threading.BoundedSemaphore,
    rng: random.Random,
) -> BuildUsage | None:
    """Size and coldness of one build, or ``None`` if it is too new or vanished meanwhile."""
    try:
        if birth_time(build_dir) > cutoff:
            return None
        chunks: list[Path] = []
        size_bytes = 0
        for name in DATA_DIR_NAMES:
            data_dir = build_dir / name
            if not data_dir.is_dir():
                continue
            for entry in data_dir.iterdir():
                chunk_size = _chunk_size(entry.name)
                if chunk_size is not None:
                    chunks.append(entry)
                    size_bytes += chunk_size
        if not chunks:
            return BuildUsage(build_dir.name, build_dir, 0, 0, None)
        sampled = rng.sample(
            chunks, sample_count(len(chunks), options.sample_pct, options.sample_min, options.sample_max)
        )
        newest = 0.0
        for chunk in sampled:
            with stat_slots:
                newest = max(newest, chunk.stat().st_atime)
    except FileNotFoundError:
        return None
    return BuildUsage(build_dir.name, build_dir, size_bytes + NON_CHUNK_CHARGE_BYTES, len(chunks), newest)


def _chunk_size(name: str) -> int | None:
    match = _CHUNK_NAME.match(name)
    if match:
        return int(match.group(1))
    match = _FRAME_NAME.match(name)
    if match:
        return int(match.group(1), 16)
    return None


def _select(candidates: list[BuildUsage], target: int, cutoff: float) -> list[BuildUsage]:
    selected: list[BuildUsage] = []
    queued = 0
    for usage in candidates:
        if usage.last_access_s is not None and usage.last_access_s > cutoff:
            break
        selected.append(usage)
        queued += usage.size_bytes
        if queued >= target:
            break
    return selected


def _delete(selected: list[BuildUsage], concurrency: int) -> int:
    def remove(usage: BuildUsage) -> bool:
        try:
            shutil.rmtree(usage.path)
        except OSError as exc:
            _log.warning("cannot remove build dir %s: %s", usage.path, exc)
            return False
        _log.info("removed build dir %s (%d bytes)", usage.path, usage.size_bytes)
        return True

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return sum(pool.map(remove, selected))

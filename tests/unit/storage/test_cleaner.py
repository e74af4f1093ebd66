from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from ember.errors import UsageError
from ember.storage import CleanOptions, clean_cache
from ember.storage.cleaner import NON_CHUNK_CHARGE_BYTES, sample_count

DAY_S = 24 * 3600.0
MIB = 1 << 20
COLD = "00000000-0000-4000-8000-00000000000a"
COOL = "00000000-0000-4000-8000-00000000000b"
WARM = "00000000-0000-4000-8000-00000000000c"
EMPTY = "00000000-0000-4000-8000-00000000000d"

# Ten days ahead, so directories created by the test are older than the 48 h grace.
NOW_S = time.time() + 10 * DAY_S


def _add_build(root: Path, build: str, chunks: int, last_access_s: float, data_dir: str = "memfile") -> Path:
    build_dir = root / build
    (build_dir / data_dir).mkdir(parents=True)
    (build_dir / data_dir / "size.txt").write_text(str(chunks * 4 * MIB))
    (build_dir / "memfile.header").mkdir()
    (build_dir / "memfile.header" / "content.bin").write_bytes(b"h")
    for index in range(chunks):
        chunk = build_dir / data_dir / f"{index:012d}-4194304.bin"
        chunk.write_bytes(b"c")
        os.utime(chunk, (last_access_s - index, last_access_s - index))
    return build_dir


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "cache"
    root.mkdir()
    _add_build(root, COLD, 1, NOW_S - 9 * DAY_S)
    _add_build(root, COOL, 2, NOW_S - 5 * DAY_S)
    _add_build(root, WARM, 1, NOW_S - 3600)
    (root / EMPTY).mkdir()
    return root


def test_dry_run_is_the_default_and_deletes_nothing(root: Path) -> None:
    report = clean_cache(root, CleanOptions(target_bytes=1 << 40), now_s=NOW_S)
    assert report.dry_run
    assert [usage.build_id for usage in report.selected] == [EMPTY, COLD, COOL]
    assert report.deleted == 0
    assert sorted(path.name for path in root.iterdir()) == sorted([COLD, COOL, WARM, EMPTY])


def test_real_run_deletes_coldest_first_until_the_target_is_met(root: Path) -> None:
    target = 4 * MIB + NON_CHUNK_CHARGE_BYTES
    report = clean_cache(root, CleanOptions(target_bytes=target, dry_run=False), now_s=NOW_S)
    assert [usage.build_id for usage in report.selected] == [EMPTY, COLD]
    assert report.deleted == 2
    assert report.bytes_freed_estimate == target
    assert sorted(path.name for path in root.iterdir()) == sorted([COOL, WARM])


def test_builds_accessed_within_grace_are_kept_whatever_the_target(root: Path) -> None:
    report = clean_cache(root, CleanOptions(target_bytes=1 << 40, dry_run=False), now_s=NOW_S)
    assert report.deleted == 3
    assert [path.name for path in root.iterdir()] == [WARM]


def test_builds_created_within_grace_are_not_candidates(root: Path) -> None:
    # Measured from the real clock, every build directory was created moments ago.
    report = clean_cache(root, CleanOptions(target_bytes=1 << 40, dry_run=False))
    assert report.selected == ()
    assert sorted(path.name for path in root.iterdir()) == sorted([COLD, COOL, WARM, EMPTY])


def test_sizes_come_from_chunk_and_frame_names(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    build_dir = _add_build(root, COLD, 2, NOW_S - 9 * DAY_S)
    frames = build_dir / "rootfs.ext4.zstd"
    frames.mkdir()
    (frames / "0000000000000000-200000.frm").write_bytes(b"f")
    (frames / "0000000000200000-1f.frm").write_bytes(b"f")
    report = clean_cache(root, CleanOptions(target_bytes=1), now_s=NOW_S)
    (usage,) = report.selected
    assert usage.chunk_count == 4
    assert usage.size_bytes == 2 * 4 * MIB + 0x200000 + 0x1F + NON_CHUNK_CHARGE_BYTES


def test_a_directory_that_is_not_a_chunk_cache_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "home"
    (root / "photos").mkdir(parents=True)
    (root / "00000000-0000-4000-8000-000000000001" / "thesis").mkdir(parents=True)
    with pytest.raises(UsageError, match="does not look like a chunk cache"):
        clean_cache(root, CleanOptions(target_bytes=1, dry_run=False), now_s=NOW_S)
    assert (root / "photos").is_dir()


def test_an_empty_root_is_accepted_and_nothing_happens(tmp_path: Path) -> None:
    report = clean_cache(tmp_path, CleanOptions(target_bytes=1, dry_run=False), now_s=NOW_S)
    assert (report.builds_scanned, report.selected, report.deleted) == (0, (), 0)


def test_disk_usage_target_decides_whether_anything_is_selected(root: Path) -> None:
    assert clean_cache(root, CleanOptions(disk_usage_target_percent=100), now_s=NOW_S).selected == ()
    report = clean_cache(root, CleanOptions(disk_usage_target_percent=0), now_s=NOW_S)
    assert report.target_bytes > 0
    assert [usage.build_id for usage in report.selected] == [EMPTY, COLD, COOL]


def test_build_sampling_scans_a_subset(root: Path) -> None:
    report = clean_cache(
        root, CleanOptions(target_bytes=1, build_sample_max=2), now_s=NOW_S, rng=random.Random(1)
    )
    assert report.builds_scanned == 2


@pytest.mark.parametrize(
    ("total", "pct", "minimum", "maximum", "expected"),
    [(100, 10, 8, 64, 10), (20, 10, 8, 64, 8), (1000, 10, 8, 64, 64), (3, 10, 8, 64, 3), (50, 100, 0, 0, 50)],
)
def test_sample_count_clamps(total: int, pct: float, minimum: int, maximum: int, expected: int) -> None:
    assert sample_count(total, pct, minimum, maximum) == expected

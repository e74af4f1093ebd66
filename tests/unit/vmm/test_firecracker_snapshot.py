"""Merging a sparse Diff memory file onto its base copies the data extents and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ember.errors import EmberError
from ember.vmm.firecracker import data_extents, merge_memory_diff

PAGE = 4096
SIZE = 256 * PAGE


def _sparse(path: Path, pages: dict[int, bytes]) -> Path:
    with path.open("wb") as stream:
        stream.truncate(SIZE)
        for index, fill in pages.items():
            stream.seek(index * PAGE)
            stream.write(fill * PAGE)
    return path


def _holes_supported(path: Path) -> bool:
    return data_extents(_sparse(path, {3: b"x"})) == [(3 * PAGE, PAGE)]


def test_only_the_diffs_pages_overwrite_the_base(tmp_path: Path) -> None:
    if not _holes_supported(tmp_path / "probe"):
        pytest.skip("this filesystem does not report holes (SEEK_DATA)")
    base = tmp_path / "base.mem"
    base.write_bytes(b"b" * SIZE)
    diff = _sparse(tmp_path / "diff.mem", {0: b"1", 1: b"2", 100: b"3", 255: b"4"})
    assert data_extents(diff) == [(0, 2 * PAGE), (100 * PAGE, PAGE), (255 * PAGE, PAGE)]
    assert merge_memory_diff(diff, base) == 4 * PAGE
    merged = base.read_bytes()
    expected = bytearray(b"b" * SIZE)
    for index, fill in {0: b"1", 1: b"2", 100: b"3", 255: b"4"}.items():
        expected[index * PAGE : (index + 1) * PAGE] = fill * PAGE
    assert merged == bytes(expected)


def test_a_diff_page_of_zeros_still_overwrites_the_base(tmp_path: Path) -> None:
    if not _holes_supported(tmp_path / "probe"):
        pytest.skip("this filesystem does not report holes (SEEK_DATA)")
    base = tmp_path / "base.mem"
    base.write_bytes(b"b" * SIZE)
    diff = _sparse(tmp_path / "diff.mem", {7: b"\0"})
    assert merge_memory_diff(diff, base) == PAGE
    assert base.read_bytes()[7 * PAGE : 8 * PAGE] == bytes(PAGE)


def test_an_empty_diff_changes_nothing(tmp_path: Path) -> None:
    base = tmp_path / "base.mem"
    base.write_bytes(os.urandom(SIZE))
    before = base.read_bytes()
    diff = _sparse(tmp_path / "diff.mem", {})
    if data_extents(diff):
        pytest.skip("this filesystem does not report holes (SEEK_DATA)")
    assert merge_memory_diff(diff, base) == 0
    assert base.read_bytes() == before


def test_a_diff_of_another_size_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    base = tmp_path / "base.mem"
    base.write_bytes(b"b" * (SIZE // 2))
    diff = _sparse(tmp_path / "diff.mem", {0: b"1"})
    with pytest.raises(EmberError, match="a diff can only be merged onto the memory file of the VM"):
        merge_memory_diff(diff, base)
    assert base.read_bytes() == b"b" * (SIZE // 2)


def test_a_missing_diff_is_reported_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(EmberError, match=r"gone\.mem"):
        data_extents(tmp_path / "gone.mem")

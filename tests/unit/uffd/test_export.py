"""A Firecracker Diff snapshot's memory file as a child memfile build."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from ember.errors import UsageError
from ember.header import NIL_UUID, DiffMetadata, Header, empty_device_header
from ember.uffd import PageState, PageTracker, export_memory_diff_snapshot

PAGE = 4096
PAGES = 16
PARENT = uuid.UUID(int=1)
CHILD = uuid.UUID(int=2)


def _parent() -> Header:
    """Generation 1: pages 0-7 stored in the parent's own data, 8-15 nil."""
    base = empty_device_header(PARENT, PAGES * PAGE, PAGE)
    dirty = np.arange(8, dtype=np.uint64)
    empty = np.arange(8, 16, dtype=np.uint64)
    return DiffMetadata(dirty, empty, PAGE).to_diff_header(base, PARENT)


def _diff_file(path: Path, pages: dict[int, bytes]) -> Path:
    with path.open("wb") as out:
        out.truncate(PAGES * PAGE)
        for page, data in pages.items():
            out.seek(page * PAGE)
            out.write(data)
    return path


def test_written_pages_become_the_childs_data_and_zeroed_pages_become_nil(tmp_path: Path) -> None:
    diff = _diff_file(tmp_path / "diff.mem", {1: b"\x01" * PAGE, 10: b"\x0a" * PAGE, 3: bytes(PAGE)})
    tracker = PageTracker(PAGES)
    tracker.set_range(10, 11, PageState.ZERO)  # installed as zeros, then written: dirty wins
    tracker.set_range(5, 6, PageState.REMOVED)
    tracker.set_range(12, 13, PageState.ZERO)
    header = export_memory_diff_snapshot(diff, _parent(), CHILD, tmp_path / "memfile", tracker)

    assert header.metadata.generation == _parent().metadata.generation + 1
    assert header.metadata.build_id == CHILD
    assert (tmp_path / "memfile").read_bytes() == b"\x01" * PAGE + b"\x0a" * PAGE
    sources = {page: header.resolve(page * PAGE) for page in range(PAGES)}
    assert (sources[1].build_id, sources[1].storage_offset) == (CHILD, 0)
    assert (sources[10].build_id, sources[10].storage_offset) == (CHILD, PAGE)
    assert {page for page, where in sources.items() if where.build_id == NIL_UUID} == {
        3,
        5,
        *range(8, 10),
        *range(11, 16),
    }
    assert (sources[2].build_id, sources[2].storage_offset) == (PARENT, 2 * PAGE)


def test_an_untouched_guest_exports_an_empty_diff_that_inherits_everything(tmp_path: Path) -> None:
    diff = _diff_file(tmp_path / "diff.mem", {})
    header = export_memory_diff_snapshot(diff, _parent(), CHILD, tmp_path / "memfile")
    assert (tmp_path / "memfile").read_bytes() == b""
    assert header.resolve(0).build_id == PARENT
    assert header.metadata.generation == 2


def test_a_diff_of_another_vms_size_or_a_foreign_tracker_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "short.mem"
    short.write_bytes(bytes(PAGE))
    with pytest.raises(UsageError, match="take the Diff snapshot from the VM"):
        export_memory_diff_snapshot(short, _parent(), CHILD, tmp_path / "memfile")
    diff = _diff_file(tmp_path / "diff.mem", {})
    with pytest.raises(UsageError, match="page tracker has 4 pages"):
        export_memory_diff_snapshot(diff, _parent(), CHILD, tmp_path / "memfile", PageTracker(4))

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from ember.errors import ObjectNotFound, StorageError
from ember.storage import LocalStorage
from ember.storage.base import atomic_write

BUILD = "6e5d4c3b-2a19-4807-8f6e-5d4c3b2a1908"


def test_objects_are_plain_files_under_the_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put(f"{BUILD}/memfile.header", b"h")
    assert (tmp_path / BUILD / "memfile.header").read_bytes() == b"h"
    assert storage.url == tmp_path.as_uri()


def test_a_failed_write_keeps_the_old_object_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / BUILD / "memfile"
    storage = LocalStorage(tmp_path)
    storage.put(f"{BUILD}/memfile", b"old")

    def fail_midway(handle: object) -> None:
        handle.write(b"partial")  # type: ignore[attr-defined]
        raise RuntimeError("disk vanished")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail_midway)
    assert target.read_bytes() == b"old"
    assert os.listdir(target.parent) == ["memfile"]


def test_in_flight_temporaries_are_not_listed(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put(f"{BUILD}/snapfile", b"s")
    (tmp_path / BUILD / ".memfile.abc123.tmp").write_bytes(b"half")
    assert storage.list("") == [f"{BUILD}/snapfile"]


def test_delete_prefix_removes_emptied_build_directories(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put(f"{BUILD}/snapfile", b"s")
    assert storage.delete_prefix(f"{BUILD}/") == 1
    assert list(tmp_path.iterdir()) == []


def test_upload_of_a_missing_file_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="upload source"):
        LocalStorage(tmp_path).put_file(f"{BUILD}/memfile", tmp_path / "nope")


def test_move_file_takes_the_file_over_instead_of_copying(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch" / "memfile"
    scratch.parent.mkdir()
    scratch.write_bytes(b"diff pages")
    scratch.chmod(0o644)
    inode = scratch.stat().st_ino
    LocalStorage(tmp_path / "store").move_file(f"{BUILD}/memfile", scratch)
    stored = tmp_path / "store" / BUILD / "memfile"
    assert not scratch.exists()
    assert stored.stat().st_ino == inode
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stored.read_bytes() == b"diff pages"


def test_move_file_across_file_systems_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "memfile.scratch"
    scratch.write_bytes(b"diff pages")

    real_replace = os.replace

    def cross_device(source: str | Path, target: str | Path) -> None:
        if Path(source) == scratch:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", cross_device)
    LocalStorage(tmp_path / "store").move_file(f"{BUILD}/memfile", scratch)
    assert (tmp_path / "store" / BUILD / "memfile").read_bytes() == b"diff pages"


def test_move_of_a_missing_file_is_a_storage_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="nope"):
        LocalStorage(tmp_path).move_file(f"{BUILD}/memfile", tmp_path / "nope")


def test_reads_see_an_object_replaced_or_deleted_through_the_same_storage(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put(f"{BUILD}/memfile", b"first version")
    buffer = bytearray(5)
    storage.read_range_into(f"{BUILD}/memfile", 0, buffer)
    storage.put(f"{BUILD}/memfile", b"other version")
    storage.read_range_into(f"{BUILD}/memfile", 0, buffer)
    assert buffer == b"other"
    storage.delete_prefix(f"{BUILD}/")
    with pytest.raises(ObjectNotFound):
        storage.read_range_into(f"{BUILD}/memfile", 0, buffer)


def test_reads_of_many_objects_keep_at_most_max_open_files_descriptors(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, max_open_files=4)
    keys = [f"{BUILD}/object-{index}" for index in range(20)]
    for index, key in enumerate(keys):
        storage.put(key, bytes([index]) * 8)
    before = len(os.listdir("/proc/self/fd"))
    buffer = bytearray(8)
    for round_ in range(3):
        for index, key in enumerate(keys):
            storage.read_range_into(key, 0, buffer)
            assert buffer == bytes([index]) * 8, (round_, key)
    assert len(os.listdir("/proc/self/fd")) <= before + 4
    storage.close()
    assert len(os.listdir("/proc/self/fd")) <= before

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ember.errors import UsageError
from ember.storage.open_files import OpenFiles

_opened: dict[int, tuple[int, int]] = {}


def open_fd(tmp_path: Path, name: str) -> int:
    path = tmp_path / name
    path.write_bytes(name.encode())
    fd = os.open(path, os.O_RDONLY)
    status = os.fstat(fd)
    _opened[fd] = (status.st_dev, status.st_ino)
    return fd


def is_open(fd: int) -> bool:
    """Whether ``fd`` still refers to the file ``open_fd`` opened (not a later reuse of the number)."""
    try:
        status = os.fstat(fd)
    except OSError:
        return False
    return (status.st_dev, status.st_ino) == _opened[fd]


def test_an_added_file_is_served_to_later_readers(tmp_path: Path) -> None:
    files = OpenFiles(4)
    entry = files.add(("k", 0), open_fd(tmp_path, "a"))
    files.release(entry)
    again = files.acquire(("k", 0))
    assert again is entry
    assert os.pread(again.fd, 1, 0) == b"a"
    files.release(again)
    assert files.acquire(("k", 1)) is None
    files.close()


def test_the_least_recently_used_file_is_evicted_and_closed(tmp_path: Path) -> None:
    files = OpenFiles(2)
    first = files.add(("k", 0), open_fd(tmp_path, "a"))
    files.release(first)
    files.release(files.add(("k", 1), open_fd(tmp_path, "b")))
    files.release(files.acquire(("k", 0)))  # chunk 0 is now the most recently used
    files.release(files.add(("k", 2), open_fd(tmp_path, "c")))
    assert files.acquire(("k", 1)) is None
    assert len(files) == 2
    assert is_open(first.fd)
    files.close()
    assert not is_open(first.fd)


def test_a_held_file_stays_open_through_eviction_until_its_reader_releases_it(tmp_path: Path) -> None:
    files = OpenFiles(1)
    held = files.add(("k", 0), open_fd(tmp_path, "a"))
    files.release(files.add(("k", 1), open_fd(tmp_path, "b")))  # evicts the held file
    assert files.acquire(("k", 0)) is None
    assert os.pread(held.fd, 1, 0) == b"a"
    files.release(held)
    assert not is_open(held.fd)


def test_close_waits_for_readers_and_the_cache_stays_usable(tmp_path: Path) -> None:
    files = OpenFiles(4)
    held = files.add(("k", 0), open_fd(tmp_path, "a"))
    files.close()
    assert is_open(held.fd)
    files.release(held)
    assert not is_open(held.fd)
    assert files.acquire(("k", 0)) is None
    reopened = files.add(("k", 0), open_fd(tmp_path, "a"))
    files.release(reopened)
    files.close()
    assert not is_open(reopened.fd)


def test_a_second_add_of_one_name_shares_the_first_descriptor(tmp_path: Path) -> None:
    files = OpenFiles(4)
    first = files.add(("k", 0), open_fd(tmp_path, "a"))
    duplicate_fd = open_fd(tmp_path, "a")
    second = files.add(("k", 0), duplicate_fd)
    assert second is first
    assert not is_open(duplicate_fd)
    files.release(first)
    files.release(second)
    files.close()


def test_discard_object_drops_every_chunk_of_that_key_only(tmp_path: Path) -> None:
    files = OpenFiles(8)
    for name in (("old", 0), ("old", 1), ("other", 0)):
        files.release(files.add(name, open_fd(tmp_path, f"{name[0]}{name[1]}")))
    files.discard_object("old")
    assert files.acquire(("old", 0)) is None
    assert files.acquire(("old", 1)) is None
    kept = files.acquire(("other", 0))
    assert kept is not None
    files.release(kept)
    files.close()


def test_a_cache_without_room_is_refused() -> None:
    with pytest.raises(UsageError, match="max_open"):
        OpenFiles(0)

"""A local store keeps guest RAM private, lets exactly one writer create a key, and sweeps the
temporaries of writers that died, with a real umask and real processes."""

from __future__ import annotations

import multiprocessing
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.errors import ObjectExists
from ember.storage import ChunkCache, LocalStorage, MemoryStorage, Storage, sweep_stale_temporaries
from ember.storage.temporaries import process_start_time, temporary_prefix

BUILD = "0c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f"


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The common default umask, under which a plain file comes out 0644 and a folder 0755."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("permissive_umask")
def test_objects_are_0600_and_the_folders_a_store_creates_0700(tmp_path: Path) -> None:
    existing = tmp_path / "local-build"
    existing.mkdir(mode=0o755)
    root = existing / "templates"
    storage = LocalStorage(root)
    storage.put(f"{BUILD}/snapfile", b"device state")
    source = tmp_path / "memfile.scratch"
    source.write_bytes(b"guest ram")
    storage.put_file(f"{BUILD}/memfile", source)
    storage.create_exclusive(f"{BUILD}/.ember-claim", b"{}")
    for name in ("snapfile", "memfile", ".ember-claim"):
        assert _mode(root / BUILD / name) == 0o600, name
    for folder in (root, root / BUILD):
        assert _mode(folder) == 0o700, folder
    assert _mode(existing) == 0o755  # a folder that existed keeps its mode


@pytest.mark.usefixtures("permissive_umask")
def test_chunk_cache_files_and_folders_are_private_too(tmp_path: Path) -> None:
    inner = MemoryStorage("private-cache")
    inner.put(f"{BUILD}/memfile", b"\x01" * 5000)
    cache = ChunkCache(inner, tmp_path / "cache")
    assert cache.read_range(f"{BUILD}/memfile", 0, 10) == b"\x01" * 10
    files = [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]
    folders = [path for path in (tmp_path / "cache").rglob("*") if path.is_dir()]
    assert files and folders
    assert {_mode(path) for path in files} == {0o600}
    assert {_mode(path) for path in [tmp_path / "cache", *folders]} == {0o700}
    cache.close()


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_of_threads_racing_to_create_one_key_exactly_one_wins(tmp_path: Path, kind: str) -> None:
    storage: Storage = LocalStorage(tmp_path) if kind == "local" else MemoryStorage("race")
    key = f"{BUILD}/.ember-claim"
    barrier = threading.Barrier(16)
    winners: list[int] = []
    losers: list[int] = []

    def race(writer: int) -> None:
        barrier.wait()
        try:
            storage.create_exclusive(key, str(writer).encode())
        except ObjectExists:
            losers.append(writer)
        else:
            winners.append(writer)

    threads = [threading.Thread(target=race, args=(writer,)) for writer in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1 and len(losers) == 15
    assert storage.get(key) == str(winners[0]).encode()
    assert storage.list(f"{BUILD}/") == [key]


def _create_in_process(root: str, key: str, writer: int, start: multiprocessing.synchronize.Event) -> None:
    start.wait()
    try:
        LocalStorage(Path(root)).create_exclusive(key, str(writer).encode())
    except ObjectExists:
        os._exit(3)
    os._exit(0)


def test_of_processes_racing_to_create_one_key_exactly_one_wins(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    start = context.Event()
    key = f"{BUILD}/.ember-claim"
    racers = [
        context.Process(target=_create_in_process, args=(str(tmp_path), key, writer, start))
        for writer in range(8)
    ]
    for racer in racers:
        racer.start()
    start.set()
    for racer in racers:
        racer.join(30)
    codes = [racer.exitcode for racer in racers]
    assert sorted(codes) == [0] + [3] * 7, codes
    winner = codes.index(0)
    assert (tmp_path / key).read_bytes() == str(winner).encode()
    assert sorted(path.name for path in (tmp_path / BUILD).iterdir()) == [".ember-claim"]


def test_an_exclusive_create_over_an_existing_object_leaves_it_untouched(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put(f"{BUILD}/metadata.json", b"first")
    with pytest.raises(ObjectExists, match=f"'{BUILD}/metadata.json' already exists in file://"):
        storage.create_exclusive(f"{BUILD}/metadata.json", b"second")
    assert storage.get(f"{BUILD}/metadata.json") == b"first"
    assert os.listdir(tmp_path / BUILD) == ["metadata.json"]


def _dead_writer() -> tuple[int, str]:
    """The pid and start time of a process that has exited."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid(), open(f'/proc/{os.getpid()}/stat').read())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid_text, stat_line = child.stdout.split(" ", 1)
    return int(pid_text), stat_line.rsplit(")", 1)[1].split()[19]


def test_the_temporaries_of_a_gone_writer_are_swept_and_a_live_ones_are_kept(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put(f"{BUILD}/memfile.header", b"h")
    folder = tmp_path / BUILD
    live = folder / f"{temporary_prefix('memfile')}k3j2x9ab.tmp"
    live.write_bytes(b"being written right now")
    pid, started = _dead_writer()
    boot = temporary_prefix("x").split(".")[2].split("-")[0]
    dead = folder / f".memfile.{boot}-{pid}-{started}.q8w7e6r5.tmp"
    dead.write_bytes(b"left by a killed copy")
    reused = (
        folder
        / f".rootfs.ext4.{boot}-{os.getpid()}-{int(process_start_time(os.getpid()) or 0) + 1}.a1b2c3d4.tmp"
    )
    reused.write_bytes(b"a writer whose pid this process reuses")
    other_shapes = [folder / ".memfile.k3j2x9.tmp", folder / "notes.tmp", folder / ".claim"]
    for path in other_shapes:
        path.write_bytes(b"not ours to judge")
    other_host = folder / f".snapfile.{'f' * 8 if boot != 'f' * 8 else 'e' * 8}-{pid}-{started}.zz.tmp"
    other_host.write_bytes(b"written on another host or before a reboot")

    assert sweep_stale_temporaries(folder) == sorted([dead, reused])
    assert not dead.exists() and not reused.exists()
    assert live.exists() and other_host.exists()
    assert all(path.exists() for path in other_shapes)
    assert (folder / "memfile.header").read_bytes() == b"h"
    assert sweep_stale_temporaries(tmp_path / "no-such-build") == []


def test_a_temporary_names_its_writer(tmp_path: Path) -> None:
    prefix = temporary_prefix("memfile")
    name, tag = prefix[1:-1].rsplit(".", 1)
    boot, pid, started = tag.split("-")
    assert name == "memfile" and len(boot) == 8
    assert int(pid) == os.getpid()
    assert started == process_start_time(os.getpid())

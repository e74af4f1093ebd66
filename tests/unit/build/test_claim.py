"""Claiming a build id: one writer per build, however many threads or processes race for it."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from ember.build import claim_build, copy_build
from ember.errors import BuildError
from ember.storage import BuildPaths, LocalStorage, MemoryStorage, Storage

BUILD = uuid.UUID("4f3e2d1c-0b9a-4876-9543-210fedcba987")


def test_a_claim_records_who_claimed_the_build(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    claim_build(storage, BUILD, "resume-build -pause")
    marker = json.loads(storage.get(BuildPaths(BUILD).claim))
    assert marker["writer"] == "resume-build -pause"
    assert marker["pid"] == os.getpid()
    assert marker["hostname"] and marker["time"]


def test_a_build_that_already_exists_cannot_be_claimed(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put(BuildPaths(BUILD).metadata, b'{"version": 2}')
    with pytest.raises(BuildError, match=f"build {BUILD} already exists in file://.*pick a new -to-build"):
        claim_build(storage, BUILD, "create-build")
    assert not storage.exists(BuildPaths(BUILD).claim)


def test_the_second_claim_says_who_holds_the_build(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    claim_build(storage, BUILD, "create-build of the base template")
    with pytest.raises(BuildError) as caught:
        claim_build(storage, BUILD, "resume-build -pause")
    message = str(caught.value)
    assert f"build {BUILD} in {storage.url} was claimed by another writer" in message
    assert f"create-build of the base template on host {os.uname().nodename}, pid {os.getpid()}" in message
    assert "pick a new -to-build / build id" in message


def test_a_claim_whose_writer_died_is_still_refused_and_says_how_to_reuse_the_id(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", "pass"])
    writer.wait()
    marker = {"writer": "create-build", "hostname": socket.gethostname(), "pid": writer.pid, "time": "t"}
    storage.put(BuildPaths(BUILD).claim, json.dumps(marker).encode())
    with pytest.raises(BuildError) as caught:
        claim_build(storage, BUILD, "create-build")
    message = str(caught.value)
    assert f"pid {writer.pid}" in message and "no longer runs on this host" in message
    assert f"delete its folder {BUILD}" in message and "pick a new -to-build" in message
    assert storage.get(BuildPaths(BUILD).claim) == json.dumps(marker).encode(), "the claim was taken over"


def test_a_live_writers_claim_is_not_called_abandoned(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    claim_build(storage, BUILD, "create-build")
    with pytest.raises(BuildError) as caught:
        claim_build(storage, BUILD, "create-build")
    assert "no longer runs" not in str(caught.value)


def test_an_unreadable_marker_still_refuses_the_claim(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put(BuildPaths(BUILD).claim, b"\x00garbage")
    with pytest.raises(BuildError, match="its claim marker is unreadable"):
        claim_build(storage, BUILD, "resume-build -pause")


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_of_threads_claiming_one_build_exactly_one_wins(tmp_path: Path, kind: str) -> None:
    storage: Storage = LocalStorage(tmp_path) if kind == "local" else MemoryStorage(f"claims-{uuid.uuid4()}")
    barrier = threading.Barrier(12)
    outcomes: list[str] = []
    lock = threading.Lock()

    def claim(writer: int) -> None:
        barrier.wait()
        try:
            claim_build(storage, BUILD, f"writer {writer}")
            outcome = "won"
        except BuildError as exc:
            outcome = "lost" if "claimed by another writer" in str(exc) else str(exc)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=claim, args=(writer,)) for writer in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["lost"] * 11 + ["won"]


def _claim_in_process(root: str, writer: int, start: multiprocessing.synchronize.Event) -> None:
    start.wait()
    try:
        claim_build(LocalStorage(Path(root)), BUILD, f"process {writer}")
    except BuildError:
        os._exit(3)
    os._exit(0)


def test_of_processes_claiming_one_build_exactly_one_wins(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    start = context.Event()
    racers = [context.Process(target=_claim_in_process, args=(str(tmp_path), n, start)) for n in range(6)]
    for racer in racers:
        racer.start()
    start.set()
    for racer in racers:
        racer.join(30)
    codes = [racer.exitcode for racer in racers]
    assert sorted(codes) == [0] + [3] * 5, codes
    marker = json.loads((tmp_path / BuildPaths(BUILD).claim).read_bytes())
    assert marker["writer"] == f"process {codes.index(0)}"


def test_copy_build_does_not_copy_the_claim_marker(tmp_path: Path) -> None:
    source = LocalStorage(tmp_path / "source")
    paths = BuildPaths(BUILD)
    claim_build(source, BUILD, "create-build")
    source.put(paths.rootfs, b"\x01" * 4096)
    document = {"version": 2, "template": {"build_id": str(BUILD)}, "filesystem_only": True}
    source.put(paths.metadata, json.dumps(document).encode())
    destination = LocalStorage(tmp_path / "destination")
    copy_build(BUILD, source, destination)
    assert destination.list("") == [paths.metadata, paths.rootfs]

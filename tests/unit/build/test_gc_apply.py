"""Applying a gc plan while others write: the re-checks, the deletion order, and a copy-build racing gc."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ember.build import BuildFile, BuildSkipped, apply_gc, claim_build, copy_build, plan_gc
from ember.build.gc import GC_WRITER, KeepKind
from ember.build.gc.synthetic import TimedMemoryStorage, write_synthetic_build, write_synthetic_chain
from ember.errors import BuildError, StorageError
from ember.storage import BuildPaths, LocalStorage, Storage
from ember.storage.temporaries import writer_tag

GRACE_S = 600.0
LONG_AGO = time.time() - 3 * 86400


class Clock:
    """A clock that moves only when told: each stored object gets a distinct, known time."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


class RecordingStorage(TimedMemoryStorage):
    """Records creates and deletes, and can run a hook when gc takes its claim."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(f"gc-{uuid.uuid4()}", clock)
        self.calls: list[tuple[str, str]] = []
        self.on_create: Callable[[str], None] | None = None
        self.on_delete: Callable[[str], None] | None = None
        self.on_get: Callable[[str], None] | None = None
        self.fail_deleting: str | None = None

    def get(self, key: str) -> bytes:
        if self.on_get is not None:
            self.on_get(key)
        return super().get(key)

    def create_exclusive(self, key: str, data: bytes) -> None:
        if self.on_create is not None:
            self.on_create(key)
        super().create_exclusive(key, data)
        self.calls.append(("create", key))

    def delete_prefix(self, prefix: str) -> int:
        if self.fail_deleting is not None and prefix.endswith(self.fail_deleting):
            raise StorageError(f"injected failure deleting {prefix}")
        self.calls.append(("delete", prefix))
        if self.on_delete is not None:
            self.on_delete(prefix)
        return super().delete_prefix(prefix)


@pytest.fixture
def recording() -> RecordingStorage:
    return RecordingStorage(Clock(LONG_AGO))


def test_metadata_json_goes_first_and_the_claim_last(recording: RecordingStorage) -> None:
    doomed, kept = uuid.uuid4(), uuid.uuid4()
    write_synthetic_build(recording, doomed)
    write_synthetic_build(recording, kept)
    plan = plan_gc(recording, [kept], grace_s=GRACE_S)
    report = apply_gc(recording, plan)
    assert [build.build_id for build in report.deleted] == [doomed]
    paths = BuildPaths(doomed)
    calls = [(verb, key) for verb, key in recording.calls if key.startswith(paths.prefix)]
    assert calls[0] == ("create", paths.claim)
    assert calls[1] == ("delete", paths.metadata)
    assert calls[-1] == ("delete", paths.claim)
    # memfile's prefix takes memfile.header with it, rootfs.ext4's takes rootfs.ext4.header
    assert {key for verb, key in calls[2:-1]} == {paths.memfile, paths.rootfs, paths.snapfile}
    assert recording.list(paths.prefix) == []


def test_an_old_claim_is_kept_until_the_end_and_no_second_claim_is_taken(recording: RecordingStorage) -> None:
    abandoned = uuid.uuid4()
    claim_build(recording, abandoned, "a pause that died")
    write_synthetic_build(recording, abandoned, complete=False)
    plan = plan_gc(recording, [uuid.uuid4()], grace_s=GRACE_S)
    recording.calls.clear()
    apply_gc(recording, plan)
    assert ("create", BuildPaths(abandoned).claim) not in recording.calls
    assert recording.calls[-1] == ("delete", BuildPaths(abandoned).claim)
    assert recording.list("") == []


def test_a_build_rewritten_since_the_plan_is_skipped(recording: RecordingStorage) -> None:
    doomed = uuid.uuid4()
    write_synthetic_build(recording, doomed)
    plan = plan_gc(recording, [uuid.uuid4()], grace_s=GRACE_S)
    recording.put(BuildPaths(doomed).metadata, recording.get(BuildPaths(doomed).metadata))
    report = apply_gc(recording, plan)
    assert report.deleted == ()
    assert report.skipped == (BuildSkipped(doomed, "changed since the plan"),)
    assert recording.exists(BuildPaths(doomed).metadata)


def test_a_claim_taken_since_the_plan_skips_the_build(recording: RecordingStorage) -> None:
    abandoned = uuid.uuid4()
    write_synthetic_build(recording, abandoned, complete=False)
    plan = plan_gc(recording, [uuid.uuid4()], grace_s=GRACE_S)
    assert [build.build_id for build in plan.deletable] == [abandoned]
    claim_build(recording, abandoned, "a retried pause")
    report = apply_gc(recording, plan)
    assert [skipped.build_id for skipped in report.skipped] == [abandoned]
    assert recording.exists(BuildPaths(abandoned).rootfs)


def test_a_writer_that_claims_first_wins_over_gc(recording: RecordingStorage) -> None:
    abandoned = uuid.uuid4()
    write_synthetic_build(recording, abandoned, complete=False)
    plan = plan_gc(recording, [uuid.uuid4()], grace_s=GRACE_S)

    def writer_claims_first(key: str) -> None:
        recording.on_create = None
        claim_build(recording, abandoned, "a writer one step ahead of gc")

    recording.on_create = writer_claims_first
    report = apply_gc(recording, plan)
    assert report.skipped == (BuildSkipped(abandoned, "claimed by a writer since the plan"),)
    assert b"one step ahead" in recording.get(BuildPaths(abandoned).claim)
    assert recording.exists(BuildPaths(abandoned).memfile)


def test_a_write_between_the_check_and_the_claim_gives_the_build_back(recording: RecordingStorage) -> None:
    abandoned = uuid.uuid4()
    write_synthetic_build(recording, abandoned, complete=False)
    plan = plan_gc(recording, [uuid.uuid4()], grace_s=GRACE_S)
    paths = BuildPaths(abandoned)

    def copy_lands_an_object(key: str) -> None:
        if key == paths.claim:
            recording.put(paths.snapfile, b"written by a copy that does not claim")

    recording.on_create = copy_lands_an_object
    report = apply_gc(recording, plan)
    assert report.skipped == (BuildSkipped(abandoned, "changed since the plan: a writer is using it"),)
    assert not recording.exists(paths.claim)
    assert recording.get(paths.snapfile) == b"written by a copy that does not claim"


def test_a_build_written_since_the_plan_protects_what_it_reads(recording: RecordingStorage) -> None:
    chain = write_synthetic_chain(recording, [uuid.uuid4(), uuid.uuid4()], seed=1)
    unrelated = uuid.uuid4()
    write_synthetic_build(recording, unrelated)
    plan = plan_gc(recording, [uuid.uuid4()], grace_s=GRACE_S)
    assert {build.build_id for build in plan.deletable} == {chain[0].build_id, chain[1].build_id, unrelated}
    child = write_synthetic_build(recording, uuid.uuid4(), chain[1], seed=3)
    report = apply_gc(recording, plan)
    assert [build.build_id for build in report.deleted] == [unrelated]
    reasons = {skipped.build_id: skipped.reason for skipped in report.skipped}
    assert reasons[chain[1].build_id] == f"read by build {child.build_id}, written since the plan"
    assert chain[0].build_id in reasons
    device = BuildFile.open(recording, child.build_id, "rootfs.ext4")
    assert len(device.read_at(0, device.size)) == device.size


def test_current_roots_protect_a_planned_build(recording: RecordingStorage) -> None:
    revived, doomed = uuid.uuid4(), uuid.uuid4()
    write_synthetic_build(recording, revived)
    write_synthetic_build(recording, doomed)
    plan = plan_gc(recording, [uuid.uuid4()], grace_s=GRACE_S)
    report = apply_gc(recording, plan, current_roots=lambda: [revived])
    assert [build.build_id for build in report.deleted] == [doomed]
    assert report.skipped == (BuildSkipped(revived, "named by the current roots"),)


def test_a_failed_deletion_is_reported_and_never_leaves_a_complete_build(recording: RecordingStorage) -> None:
    doomed = uuid.uuid4()
    write_synthetic_build(recording, doomed)
    plan = plan_gc(recording, [uuid.uuid4()], grace_s=GRACE_S)
    recording.fail_deleting = "/snapfile"
    report = apply_gc(recording, plan)
    assert not report.ok and report.deleted == ()
    assert report.failed[0].build_id == doomed
    assert "injected failure" in report.failed[0].error
    assert not recording.exists(BuildPaths(doomed).metadata)
    assert recording.exists(BuildPaths(doomed).snapfile)
    marker = recording.get(BuildPaths(doomed).claim)
    assert GC_WRITER.encode() in marker
    # The next run sees an incomplete build gc claimed: kept one grace period, then deleted.
    recording.fail_deleting = None
    assert plan_gc(recording, [], grace_s=GRACE_S, now=recording.clock()).kept[0].kind is KeepKind.CLAIMED
    later = plan_gc(recording, [], grace_s=GRACE_S, now=recording.clock() + 2 * GRACE_S)
    assert [build.build_id for build in apply_gc(recording, later).deleted] == [doomed]


def test_a_metadata_json_stored_while_gc_deletes_is_reported(recording: RecordingStorage) -> None:
    doomed = uuid.uuid4()
    write_synthetic_build(recording, doomed)
    plan = plan_gc(recording, [uuid.uuid4()], grace_s=GRACE_S)
    paths = BuildPaths(doomed)
    metadata = recording.get(paths.metadata)

    def copy_completes(prefix: str) -> None:
        if prefix == paths.claim:
            recording.on_delete = None
            recording.put(paths.metadata, metadata)

    recording.on_delete = copy_completes
    report = apply_gc(recording, plan)
    assert report.deleted == () and report.failed[0].build_id == doomed
    assert "while gc was deleting the build" in report.failed[0].error


def test_an_unfinished_build_whose_header_vanishes_while_planning_is_no_obstacle(
    recording: RecordingStorage,
) -> None:
    given_up, finished = uuid.uuid4(), uuid.uuid4()
    write_synthetic_build(recording, given_up, complete=False)
    write_synthetic_build(recording, finished)

    def writer_gives_up(key: str) -> None:
        if key.startswith(f"{given_up}/") and key.endswith(".header"):
            recording.delete_prefix(f"{given_up}/")

    recording.on_get = writer_gives_up
    plan = plan_gc(recording, [finished], grace_s=GRACE_S, now=LONG_AGO)
    assert {entry.build_id for entry in plan.kept} == {given_up, finished}

    def someone_deletes_it(key: str) -> None:
        if key.startswith(f"{finished}/") and key.endswith(".header"):
            recording.delete_prefix(f"{finished}/")

    recording.on_get = someone_deletes_it
    with pytest.raises(BuildError, match=r"disappeared .* while gc was reading it"):
        plan_gc(recording, [finished], grace_s=GRACE_S)


def test_a_rescan_that_fails_stops_gc_before_it_deletes_anything(recording: RecordingStorage) -> None:
    doomed = uuid.uuid4()
    write_synthetic_build(recording, doomed)
    plan = plan_gc(recording, [uuid.uuid4()], grace_s=GRACE_S)
    recording.put(f"{uuid.uuid4()}/rootfs.ext4.header", b"\x03garbage from a broken writer")
    report = apply_gc(recording, plan)
    assert not report.ok and report.deleted == ()
    assert report.stopped is not None and "a rescan of memory://" in report.stopped
    assert [skipped.reason for skipped in report.skipped] == [report.stopped]
    assert recording.exists(BuildPaths(doomed).metadata)


def test_a_plan_for_another_storage_is_refused(recording: RecordingStorage) -> None:
    plan = plan_gc(recording, [], grace_s=0)
    with pytest.raises(Exception, match="this gc plan was made for"):
        apply_gc(TimedMemoryStorage("elsewhere"), plan)


def age_tree(root: Path, moment: float) -> None:
    """Set the mtime of every file and folder under ``root`` (inclusive) to ``moment``."""
    for current, dirs, files in os.walk(root, topdown=False):
        for name in files:
            os.utime(Path(current) / name, (moment, moment))
        for name in dirs:
            os.utime(Path(current) / name, (moment, moment))


def test_a_local_temporary_in_flight_keeps_an_old_build(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    build = uuid.uuid4()
    write_synthetic_build(storage, build, complete=False)
    age_tree(storage.root, LONG_AGO)
    (storage.root / str(build) / f".snapfile.{writer_tag()}.abc123.tmp").write_bytes(b"half")
    plan = plan_gc(storage, [], grace_s=GRACE_S)
    assert [entry.kind for entry in plan.kept] == [KeepKind.YOUNG]
    assert plan.deletable == ()


def test_a_dead_writers_temporary_goes_with_its_abandoned_folder(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    build = uuid.uuid4()
    write_synthetic_build(storage, build, complete=False)
    boot = writer_tag().split("-")[0]
    (storage.root / str(build) / f".memfile.{boot}-4194302-1.abc123.tmp").write_bytes(b"half")
    age_tree(storage.root, LONG_AGO)
    plan = plan_gc(storage, [], grace_s=GRACE_S)
    assert [entry.build_id for entry in plan.deletable] == [build]
    apply_gc(storage, plan)
    assert not (storage.root / str(build)).exists()


class SlowSource(Storage):
    """A source whose data objects take a while to download: headers land first, data trickles in."""

    def __init__(self, inner: Storage, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.copying = threading.Event()

    @property
    def url(self) -> str:
        return "slow+" + self.inner.url

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)

    def put_file(self, key: str, path: Path) -> None:
        self.inner.put_file(key, path)

    def create_exclusive(self, key: str, data: bytes) -> None:
        self.inner.create_exclusive(key, data)

    def get_to_file(self, key: str, path: Path) -> None:
        if not key.endswith((".header", "metadata.json")):
            self.copying.set()
            time.sleep(self.delay_s)
        self.inner.get_to_file(key, path)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        return self.inner.read_range(key, offset, length)

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def delete_prefix(self, prefix: str) -> int:
        return self.inner.delete_prefix(prefix)

    def crc32c(self, key: str) -> int | None:
        return self.inner.crc32c(key)


@pytest.fixture
def destination(tmp_path: Path) -> Iterator[LocalStorage]:
    storage = LocalStorage(tmp_path / "destination")
    yield storage
    storage.close()


def test_gc_during_a_copy_build_leaves_the_copy_and_what_it_reads(
    tmp_path: Path, destination: LocalStorage
) -> None:
    """The copy reuses an old unreferenced build already at the destination (same CRC32C) and
    lands its own objects slowly; gc runs in the middle and must take neither."""
    source_store = LocalStorage(tmp_path / "source")
    parent, child = write_synthetic_chain(source_store, [uuid.uuid4(), uuid.uuid4()], seed=1)
    copy_build(parent.build_id, source_store, destination)
    live = write_synthetic_chain(destination, [uuid.uuid4(), uuid.uuid4()])
    stale = write_synthetic_build(destination, uuid.uuid4())
    age_tree(destination.root, LONG_AGO)

    slow = SlowSource(source_store, delay_s=0.4)
    outcome: list[object] = []

    def copy() -> None:
        try:
            outcome.append(copy_build(child.build_id, slow, destination, workers=2))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=copy)
    thread.start()
    assert slow.copying.wait(10)
    deadline = time.monotonic() + 10
    while not destination.exists(BuildPaths(child.build_id).rootfs_header):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    plan = plan_gc(destination, [live[-1].build_id], grace_s=GRACE_S)
    report = apply_gc(destination, plan)
    thread.join(30)

    assert [build.build_id for build in report.deleted] == [stale.build_id]
    kept = {entry.build_id: entry for entry in plan.kept}
    assert kept[child.build_id].kind is KeepKind.YOUNG
    assert kept[parent.build_id].referenced_by == child.build_id
    assert not isinstance(outcome[0], Exception), outcome[0]
    for file_name in ("memfile", "rootfs.ext4"):
        copied = BuildFile.open(destination, child.build_id, file_name)
        original = BuildFile.open(source_store, child.build_id, file_name)
        assert copied.read_at(0, copied.size) == original.read_at(0, original.size)
    assert destination.exists(BuildPaths(child.build_id).metadata)


def test_a_copy_started_after_the_plan_protects_the_build_it_reuses(
    tmp_path: Path, destination: LocalStorage
) -> None:
    """The plan marks the old parent deletable; the copy then lands a child that reads from it
    (skipping the parent's identical objects): apply's rescan sees the child and keeps both."""
    source_store = LocalStorage(tmp_path / "source")
    parent, child = write_synthetic_chain(source_store, [uuid.uuid4(), uuid.uuid4()], seed=1)
    copy_build(parent.build_id, source_store, destination)
    age_tree(destination.root, LONG_AGO)
    plan = plan_gc(destination, [uuid.uuid4()], grace_s=GRACE_S)
    assert [build.build_id for build in plan.deletable] == [parent.build_id]

    slow = SlowSource(source_store, delay_s=0.3)
    thread = threading.Thread(
        target=copy_build, args=(child.build_id, slow, destination), kwargs={"workers": 2}
    )
    thread.start()
    paths = BuildPaths(child.build_id)
    deadline = time.monotonic() + 10
    while not (destination.exists(paths.rootfs_header) and destination.exists(paths.memfile_header)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    report = apply_gc(destination, plan)
    thread.join(30)
    assert report.deleted == ()
    assert report.skipped == (
        BuildSkipped(parent.build_id, f"read by build {child.build_id}, written since the plan"),
    )
    copied = BuildFile.open(destination, child.build_id, "memfile")
    original = BuildFile.open(source_store, child.build_id, "memfile")
    assert copied.read_at(0, copied.size) == original.read_at(0, original.size)

"""Garbage collection of builds: what a plan keeps and deletes, on every storage backend.

The scenario is the issue's: two templates sharing a base layer, three paused snapshots of
them, and a deleted template (plus a snapshot of it and a superseded pause) whose base is the
live templates' base. What must stay is computed here by an independent walk over the raw
header records from the roots; what is expected on the device is rebuilt from each layer's
own dirty and empty block lists, never through ember's mapping algebra.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ember.build import BuildFile, KeepKind, apply_gc, claim_build, plan_gc
from ember.build.gc.synthetic import (
    SYNTHETIC_BLOCKS,
    SyntheticBuild,
    TimedMemoryStorage,
    fill_byte,
    write_synthetic_build,
)
from ember.errors import BuildError, UsageError
from ember.header import NIL_UUID, PAGE_SIZE, deserialize_header
from ember.storage import MEMFILE, ROOTFS, LocalStorage, MemoryStorage, Storage
from ember.storage.gcs import GcsStorage
from ember.storage.s3 import S3Storage

GRACE_S = 600.0


@dataclass(frozen=True)
class Store:
    storage: Storage
    cloud: bool

    def boundary(self) -> float:
        """A moment every object stored before the call predates and every one after follows.

        Local and memory times are exact; moto rounds LastModified to whole seconds.
        """
        pause = 1.5 if self.cloud else 0.02
        time.sleep(pause)
        moment = time.time()
        time.sleep(pause)
        return moment


@pytest.fixture(
    params=[
        "local",
        "memory",
        pytest.param("gcs", marks=pytest.mark.emulator),
        pytest.param("s3", marks=pytest.mark.emulator),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    prefix = f"gc-{uuid.uuid4().hex}"
    if request.param == "local":
        yield Store(LocalStorage(tmp_path / "store"), cloud=False)
    elif request.param == "memory":
        yield Store(TimedMemoryStorage(prefix), cloud=False)
    elif request.param == "gcs":
        endpoint = request.getfixturevalue("gcs_emulator")
        yield Store(GcsStorage(endpoint.bucket, prefix, emulator_host=endpoint.url), cloud=True)
    else:
        endpoint = request.getfixturevalue("s3_server")
        s3 = S3Storage(
            endpoint.bucket,
            prefix,
            endpoint_url=endpoint.url,
            region=endpoint.region,
            aws_access_key_id=endpoint.access_key,
            aws_secret_access_key=endpoint.secret_key,
        )
        yield Store(s3, cloud=True)


@dataclass
class Scenario:
    builds: dict[uuid.UUID, SyntheticBuild]
    names: dict[str, uuid.UUID]
    roots: set[uuid.UUID]

    def ids(self, *names: str) -> set[uuid.UUID]:
        return {self.names[name] for name in names}


def write_scenario(storage: Storage) -> Scenario:
    names: dict[str, uuid.UUID] = {}
    builds: dict[uuid.UUID, SyntheticBuild] = {}

    def layer(name: str, parent: str | None, *, filesystem_only: bool = False) -> None:
        names[name] = uuid.uuid4()
        over = None if parent is None else builds[names[parent]]
        builds[names[name]] = write_synthetic_build(
            storage, names[name], over, seed=len(names), filesystem_only=filesystem_only
        )

    layer("base", None)
    layer("template-1-mid", "base")
    layer("template-1", "template-1-mid")
    layer("template-2", "base")
    layer("deleted-template-mid", "base")
    layer("deleted-template", "deleted-template-mid")
    layer("snapshot-1", "template-1")
    layer("snapshot-2", "template-1")
    layer("snapshot-3", "template-2", filesystem_only=True)
    layer("superseded-pause", "snapshot-1")
    layer("snapshot-of-deleted", "deleted-template")
    roots = {names[name] for name in ("template-1", "template-2", "snapshot-1", "snapshot-2", "snapshot-3")}
    return Scenario(builds, names, roots)


DELETED_IN_SCENARIO = ("deleted-template-mid", "deleted-template", "superseded-pause", "snapshot-of-deleted")


def reachable(storage: Storage, roots: set[uuid.UUID]) -> set[uuid.UUID]:
    """Every build the roots' header records name, transitively (the test's own walk)."""
    seen: set[uuid.UUID] = set()
    pending = list(roots)
    while pending:
        build = pending.pop()
        if build in seen:
            continue
        seen.add(build)
        for name in (MEMFILE, ROOTFS):
            key = f"{build}/{name}.header"
            if storage.exists(key):
                for record in deserialize_header(storage.get(key)).mappings.records():
                    if record.build_id != NIL_UUID:
                        pending.append(record.build_id)
    return seen


def stored_builds(storage: Storage) -> set[uuid.UUID]:
    return {uuid.UUID(key.split("/", 1)[0]) for key in storage.list("")}


def expected_image(builds: dict[uuid.UUID, SyntheticBuild], top: uuid.UUID, file_name: str) -> bytes:
    """The device as the layers from the first to ``top`` wrote it, block by block."""
    chain = []
    current: uuid.UUID | None = top
    while current is not None:
        chain.append(builds[current])
        current = builds[current].parent
    image = bytearray(SYNTHETIC_BLOCKS * PAGE_SIZE)
    for layer in reversed(chain):
        for block in layer.dirty.get(file_name, ()):
            image[block * PAGE_SIZE : (block + 1) * PAGE_SIZE] = (
                bytes([fill_byte(layer.build_id, file_name, block)]) * PAGE_SIZE
            )
        for block in layer.empty.get(file_name, ()):
            image[block * PAGE_SIZE : (block + 1) * PAGE_SIZE] = bytes(PAGE_SIZE)
    return bytes(image)


def assert_builds_read_back(storage: Storage, scenario: Scenario, builds: set[uuid.UUID]) -> None:
    """What a resume reads: every device of each build, byte for byte, through BuildFile."""
    for build in builds:
        for file_name in scenario.builds[build].headers:
            device = BuildFile.open(storage, build, file_name)
            assert device.read_at(0, device.size) == expected_image(scenario.builds, build, file_name), (
                build,
                file_name,
            )


def test_gc_removes_exactly_the_unreferenced_builds_and_kept_ones_still_read(store: Store) -> None:
    storage = store.storage
    scenario = write_scenario(storage)
    everything = set(scenario.builds)
    needed = reachable(storage, scenario.roots)
    assert everything - needed == scenario.ids(*DELETED_IN_SCENARIO)
    assert scenario.names["base"] in needed

    plan = plan_gc(storage, scenario.roots, grace_s=GRACE_S, now=time.time() + 2 * GRACE_S)
    assert {build.build_id for build in plan.deletable} == everything - needed
    assert {build.build_id for build in plan.kept} == needed
    assert all(build.reason == "unreferenced" and build.objects in (4, 6) for build in plan.deletable)
    assert plan.deletable_bytes == sum(build.size_bytes or 0 for build in plan.deletable) > 0

    report = apply_gc(storage, plan)
    assert report.ok and report.skipped == ()
    assert {build.build_id for build in report.deleted} == everything - needed
    assert report.objects_deleted == plan.deletable_objects
    assert stored_builds(storage) == needed
    assert reachable(storage, scenario.roots) == needed
    assert_builds_read_back(storage, scenario, needed)


def test_the_plan_says_why_each_build_is_kept(store: Store) -> None:
    scenario = write_scenario(store.storage)
    plan = plan_gc(store.storage, scenario.roots, grace_s=GRACE_S, now=time.time() + 2 * GRACE_S)
    kept = {build.build_id: build for build in plan.kept}
    assert {build for build, entry in kept.items() if entry.kind is KeepKind.ROOT} == scenario.roots
    referenced = {build: entry for build, entry in kept.items() if entry.kind is KeepKind.REFERENCED}
    assert set(referenced) == scenario.ids("base", "template-1-mid")
    for entry in referenced.values():
        assert entry.referenced_by in kept
        assert entry.reason == f"referenced by {entry.referenced_by}"
    assert plan.missing_roots == () and plan.missing_references == () and plan.times_known


def test_the_grace_period_keeps_young_builds_in_progress_and_claimed(store: Store) -> None:
    storage = store.storage
    ids = {name: uuid.uuid4() for name in ("root", "old", "old-parent", "abandoned", "abandoned-claimed")}
    ids |= {name: uuid.uuid4() for name in ("claimed", "young", "young-child", "in-progress")}
    write_synthetic_build(storage, ids["root"])
    write_synthetic_build(storage, ids["old"])
    parent = write_synthetic_build(storage, ids["old-parent"])
    write_synthetic_build(storage, ids["abandoned"], complete=False)
    claim_build(storage, ids["abandoned-claimed"], "a pause that died")
    write_synthetic_build(storage, ids["abandoned-claimed"], complete=False)
    write_synthetic_build(storage, ids["claimed"], complete=False)
    cut = store.boundary()
    claim_build(storage, ids["claimed"], "a pause retried just now")
    write_synthetic_build(storage, ids["young"])
    write_synthetic_build(storage, ids["young-child"], parent, seed=2)
    write_synthetic_build(storage, ids["in-progress"], complete=False)

    plan = plan_gc(storage, [ids["root"]], grace_s=GRACE_S, now=cut + GRACE_S)
    kinds = {build.build_id: build.kind for build in plan.kept}
    assert kinds == {
        ids["root"]: KeepKind.ROOT,
        ids["claimed"]: KeepKind.CLAIMED,
        ids["young"]: KeepKind.YOUNG,
        ids["young-child"]: KeepKind.YOUNG,
        ids["old-parent"]: KeepKind.REFERENCED,
        ids["in-progress"]: KeepKind.YOUNG,
    }
    reasons = {build.build_id: build.reason for build in plan.kept}
    assert reasons[ids["in-progress"]] == "in progress: no metadata.json, changed within the grace"
    assert reasons[ids["old-parent"]] == f"referenced by {ids['young-child']}"
    deletable = {build.build_id: build for build in plan.deletable}
    assert set(deletable) == {ids["old"], ids["abandoned"], ids["abandoned-claimed"]}
    assert deletable[ids["abandoned"]].reason.startswith("abandoned: no metadata.json")
    assert not deletable[ids["abandoned"]].complete
    assert all(build.age_s is not None and build.age_s > GRACE_S for build in plan.deletable)

    report = apply_gc(storage, plan)
    assert {build.build_id for build in report.deleted} == set(deletable)
    assert stored_builds(storage) == set(kinds)


def test_planning_reads_and_never_writes(store: Store) -> None:
    storage = store.storage
    scenario = write_scenario(storage)
    before = {key: storage.get(key) for key in storage.list("")}
    plan = plan_gc(storage, scenario.roots, grace_s=0)
    assert plan.deletable
    assert {key: storage.get(key) for key in storage.list("")} == before


def test_without_roots_apply_refuses_to_delete_complete_builds(store: Store) -> None:
    storage = store.storage
    scenario = write_scenario(storage)
    plan = plan_gc(storage, [], grace_s=GRACE_S, now=time.time() + 2 * GRACE_S)
    assert {build.build_id for build in plan.deletable} == set(scenario.builds)
    with pytest.raises(UsageError, match="no roots given: every complete build older than the grace"):
        apply_gc(storage, plan)
    assert stored_builds(storage) == set(scenario.builds)
    report = apply_gc(storage, plan, allow_no_roots=True)
    assert len(report.deleted) == len(scenario.builds)
    assert storage.list("") == []


def test_without_roots_abandoned_incomplete_builds_may_still_go() -> None:
    storage = TimedMemoryStorage(f"gc-{uuid.uuid4()}")
    young, abandoned = uuid.uuid4(), uuid.uuid4()
    write_synthetic_build(storage, abandoned, complete=False)
    storage.clock = lambda: time.time() + 2 * GRACE_S
    write_synthetic_build(storage, young)
    plan = plan_gc(storage, [], grace_s=GRACE_S, now=time.time() + GRACE_S + 1)
    assert [build.build_id for build in plan.deletable] == [abandoned]
    assert [build.build_id for build in apply_gc(storage, plan).deleted] == [abandoned]
    assert stored_builds(storage) == {young}


def test_a_storage_without_times_keeps_every_unrooted_build_unless_the_grace_is_zero() -> None:
    storage = MemoryStorage(f"gc-{uuid.uuid4()}")
    scenario = write_scenario(storage)
    plan = plan_gc(storage, scenario.roots, grace_s=GRACE_S, now=time.time() + 10 * GRACE_S)
    assert not plan.times_known and plan.deletable == ()
    unknown = {build.build_id for build in plan.kept if build.kind is KeepKind.AGE_UNKNOWN}
    assert unknown == scenario.ids(*DELETED_IN_SCENARIO)
    plan = plan_gc(storage, scenario.roots, grace_s=0)
    assert {build.build_id for build in plan.deletable} == scenario.ids(*DELETED_IN_SCENARIO)
    apply_gc(storage, plan)
    assert stored_builds(storage) == set(scenario.builds) - scenario.ids(*DELETED_IN_SCENARIO)


def test_an_unreadable_header_of_a_kept_build_stops_the_plan() -> None:
    storage = TimedMemoryStorage(f"gc-{uuid.uuid4()}")
    scenario = write_scenario(storage)
    storage.put(f"{scenario.names['template-1']}/rootfs.ext4.header", b"\x03not a header")
    with pytest.raises(
        BuildError, match=f"cannot read the header of kept build {scenario.names['template-1']}"
    ):
        plan_gc(storage, scenario.roots, grace_s=0)


def test_missing_roots_and_broken_references_are_reported() -> None:
    storage = TimedMemoryStorage(f"gc-{uuid.uuid4()}")
    scenario = write_scenario(storage)
    base = scenario.names["base"]
    storage.delete_prefix(f"{base}/")
    absent = uuid.uuid4()
    plan = plan_gc(storage, [*scenario.roots, absent], grace_s=0)
    assert plan.missing_roots == (absent,)
    assert {missing for _, missing in plan.missing_references} == {base}
    assert {build for build, _ in plan.missing_references} <= set(scenario.builds)


def test_keys_outside_build_folders_are_never_touched() -> None:
    storage = TimedMemoryStorage(f"gc-{uuid.uuid4()}")
    build = uuid.uuid4()
    write_synthetic_build(storage, build)
    strangers = ["README", "notes/today.txt", f"{str(uuid.uuid4()).upper()}/memfile", "templates/x/y"]
    for key in strangers:
        storage.put(key, b"not a build")
    plan = plan_gc(storage, [], grace_s=0)
    assert sorted(plan.ignored_keys) == sorted(strangers)
    apply_gc(storage, plan, allow_no_roots=True)
    assert storage.list("") == sorted(strangers)


def test_roots_may_be_strings_and_bad_ones_are_refused() -> None:
    storage = TimedMemoryStorage(f"gc-{uuid.uuid4()}")
    build = uuid.uuid4()
    write_synthetic_build(storage, build)
    assert [entry.build_id for entry in plan_gc(storage, [str(build)], grace_s=0).kept] == [build]
    with pytest.raises(UsageError, match="gc root 'nope' is not a build id"):
        plan_gc(storage, ["nope"], grace_s=0)
    with pytest.raises(UsageError, match="grace period -1"):
        plan_gc(storage, [build], grace_s=-1)

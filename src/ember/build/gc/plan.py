"""What a gc run would delete and what it keeps, and why: ``plan_gc``. Reads, never writes.

A build is kept when any of these holds, and then every build its headers read from is kept
too, transitively and whatever their age (a kept build is only readable with them):

* it is a **root**: the caller names it (a live template's build, a paused sandbox's
  snapshot, the build a running sandbox was resumed from);
* its ``.ember-claim`` marker is younger than the grace period: a writer owns it;
* anything in its folder changed within the grace period (an upload, a copy or a pause in
  progress writes objects; metadata.json comes last), or the storage cannot say when.

Everything else with at least one object is deletable: a complete build nothing kept reads
from ("unreferenced"), or a folder without metadata.json whose writer stopped longer than
the grace period ago ("abandoned"). Only the headers of kept builds are read.
"""

from __future__ import annotations

import enum
import math
import time
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ember.build.gc.listing import BuildFolder, list_storage
from ember.build.reader import load_header
from ember.errors import BuildError, HeaderError, UsageError
from ember.storage import MEMFILE, ROOTFS, BuildPaths, Storage

DEFAULT_GC_WORKERS = 16
"""Headers read at once while planning, builds deleted at once while applying."""


class KeepKind(enum.Enum):
    """Why a build is kept, strongest first."""

    ROOT = "root"
    REFERENCED = "referenced"
    CLAIMED = "claimed"
    YOUNG = "too young"
    AGE_UNKNOWN = "age unknown"


@dataclass(frozen=True)
class KeptBuild:
    """A build the plan keeps; ``referenced_by`` names the kept build whose header reads from it."""

    build_id: uuid.UUID
    kind: KeepKind
    complete: bool
    objects: int
    size_bytes: int | None
    age_s: float | None
    referenced_by: uuid.UUID | None = None

    @property
    def reason(self) -> str:
        if self.kind is KeepKind.REFERENCED:
            return f"referenced by {self.referenced_by}"
        if self.kind is KeepKind.CLAIMED:
            return "claimed: its .ember-claim is younger than the grace"
        if self.kind is KeepKind.YOUNG:
            if self.complete:
                return "younger than the grace"
            return "in progress: no metadata.json, changed within the grace"
        if self.kind is KeepKind.AGE_UNKNOWN:
            return "age unknown: the storage reports no modification times"
        return "root"


@dataclass(frozen=True)
class DeletableBuild:
    """A build the plan deletes, with the listing of its folder that ``apply_gc`` re-checks."""

    folder: BuildFolder
    age_s: float | None

    @property
    def build_id(self) -> uuid.UUID:
        return self.folder.build_id

    @property
    def complete(self) -> bool:
        return self.folder.complete

    @property
    def objects(self) -> int:
        return len(self.folder.objects)

    @property
    def size_bytes(self) -> int | None:
        return self.folder.size_bytes

    @property
    def reason(self) -> str:
        if self.complete:
            return "unreferenced"
        return "abandoned: no metadata.json, unchanged for longer than the grace"


@dataclass(frozen=True)
class GcPlan:
    """One storage's builds split into kept (with why) and deletable, at ``now``.

    ``missing_roots`` are roots the storage does not hold; ``missing_references`` are
    ``(kept build, build it reads from)`` pairs where the second is absent: that kept build
    is already broken. ``ignored_keys`` lie outside any build folder and are never touched.
    """

    storage_url: str
    roots: frozenset[uuid.UUID]
    grace_s: float
    now: float
    kept: tuple[KeptBuild, ...]
    deletable: tuple[DeletableBuild, ...]
    missing_roots: tuple[uuid.UUID, ...] = ()
    missing_references: tuple[tuple[uuid.UUID, uuid.UUID], ...] = ()
    ignored_keys: tuple[str, ...] = ()
    times_known: bool = True
    folders: Mapping[uuid.UUID, BuildFolder] = field(default_factory=dict, repr=False, compare=False)

    @property
    def deletable_objects(self) -> int:
        return sum(build.objects for build in self.deletable)

    @property
    def deletable_bytes(self) -> int:
        return sum(build.size_bytes or 0 for build in self.deletable)

    @property
    def deletes_complete_builds(self) -> bool:
        return any(build.complete for build in self.deletable)

    def kept_count(self, kind: KeepKind) -> int:
        return sum(1 for build in self.kept if build.kind is kind)


def canonical_roots(roots: Iterable[uuid.UUID | str]) -> frozenset[uuid.UUID]:
    """Build ids as UUIDs; ``UsageError`` names the first that is not one."""
    found = set()
    for root in roots:
        try:
            found.add(root if isinstance(root, uuid.UUID) else uuid.UUID(str(root)))
        except ValueError:
            raise UsageError(f"gc root {root!r} is not a build id: expected a UUID") from None
    return frozenset(found)


def check_grace(grace_s: float) -> float:
    if not math.isfinite(grace_s) or grace_s < 0:
        raise UsageError(f"grace period {grace_s} s must be a finite number of seconds >= 0")
    return float(grace_s)


def passed_grace(age_s: float | None, grace_s: float) -> bool:
    """Whether something of age ``age_s`` is older than the grace; an unknown age only passes a zero grace."""
    return grace_s == 0 if age_s is None else age_s > grace_s


def folder_age(folder: BuildFolder, now: float) -> float | None:
    newest = folder.newest
    return None if newest is None else now - newest


def _guard(folder: BuildFolder, age_s: float | None, now: float, grace_s: float) -> KeepKind | None:
    """Why the folder must stay whatever references it, or None."""
    claim = folder.claim
    if claim is not None:
        claim_age = None if claim.modified is None or not folder.times_known else now - claim.modified
        if not passed_grace(claim_age, grace_s):
            return KeepKind.CLAIMED
    if not passed_grace(age_s, grace_s):
        return KeepKind.AGE_UNKNOWN if age_s is None else KeepKind.YOUNG
    return None


def read_references(storage: Storage, folder: BuildFolder) -> frozenset[uuid.UUID]:
    """Every other build the folder's headers (memfile, rootfs; whichever exist) read from.

    A header that cannot be decoded, or a complete build's header that was listed and is gone,
    raises ``BuildError``: gc cannot tell what such a build needs, so it must not delete
    anything on a guess. An unfinished build's header may vanish: its writer gave it up.
    """
    paths = BuildPaths(folder.build_id)
    found: set[uuid.UUID] = set()
    for file_name in (MEMFILE, ROOTFS):
        key = paths.header(file_name)
        if key not in folder.keys:
            continue
        try:
            header = load_header(storage, key)
        except HeaderError as exc:
            raise BuildError(
                f"gc cannot read the header of kept build {folder.build_id}: {exc}; it cannot tell which "
                "builds that one reads from, so nothing was deleted: repair or remove that build by hand"
            ) from exc
        if header is None:
            if not folder.complete:
                continue  # an unfinished build being removed by its own writer (release_claim)
            raise BuildError(
                f"{key} disappeared from {storage.url} while gc was reading it: another gc or a delete "
                "is running there; nothing was deleted; run gc again when it is done"
            )
        found.update(header.referenced_builds())
    found.discard(folder.build_id)
    return frozenset(found)


class _Reachability:
    """Kept builds and the reasons, grown breadth first through the headers of kept builds."""

    def __init__(self, storage: Storage, folders: Mapping[uuid.UUID, BuildFolder], now: float, workers: int):
        self.storage = storage
        self.folders = folders
        self.now = now
        self.workers = workers
        self.kept: dict[uuid.UUID, KeptBuild] = {}
        self.missing: dict[tuple[uuid.UUID, uuid.UUID], None] = {}

    def keep(self, build_id: uuid.UUID, kind: KeepKind, by: uuid.UUID | None = None) -> None:
        folder = self.folders[build_id]
        self.kept[build_id] = KeptBuild(
            build_id,
            kind,
            folder.complete,
            len(folder.objects),
            folder.size_bytes,
            folder_age(folder, self.now),
            by,
        )

    def spread(self, frontier: list[uuid.UUID]) -> None:
        """Keep everything the headers of ``frontier`` (already kept) read from, transitively."""
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="gc-plan") as pool:
            while frontier:
                frontier = sorted(frontier)
                references = list(
                    pool.map(lambda build: read_references(self.storage, self.folders[build]), frontier)
                )
                following: list[uuid.UUID] = []
                for build, reads in zip(frontier, references, strict=True):
                    for other in sorted(reads):
                        if other in self.kept:
                            continue
                        if other not in self.folders:
                            self.missing[(build, other)] = None
                            continue
                        self.keep(other, KeepKind.REFERENCED, build)
                        following.append(other)
                frontier = following


def plan_gc(
    storage: Storage,
    roots: Iterable[uuid.UUID | str],
    *,
    grace_s: float,
    now: float | None = None,
    workers: int = DEFAULT_GC_WORKERS,
) -> GcPlan:
    """What gc would delete from ``storage`` keeping ``roots`` (and what they read from).

    ``roots`` is the caller's list of builds in use: for the control plane, every live
    template's build, every paused sandbox's snapshot build and every running sandbox's
    build, straight from its database. ``now`` (POSIX seconds) defaults to the clock; ages
    are measured from it to each folder's newest change. The plan only reads: one listing
    of the storage and the headers of the kept builds.
    """
    grace = check_grace(grace_s)
    if workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")
    root_ids = canonical_roots(roots)
    moment = time.time() if now is None else float(now)
    listing = list_storage(storage)
    folders = listing.folders
    walk = _Reachability(storage, folders, moment, workers)
    present_roots = sorted(root for root in root_ids if root in folders)
    for root in present_roots:
        walk.keep(root, KeepKind.ROOT)
    walk.spread(present_roots)
    guarded: list[uuid.UUID] = []
    for build_id, folder in folders.items():
        if build_id in walk.kept:
            continue
        kind = _guard(folder, folder_age(folder, moment), moment, grace)
        if kind is not None:
            walk.keep(build_id, kind)
            guarded.append(build_id)
    walk.spread(guarded)
    deletable = tuple(
        DeletableBuild(folder, folder_age(folder, moment))
        for build_id, folder in folders.items()
        if build_id not in walk.kept and folder.objects
    )
    return GcPlan(
        storage_url=storage.url,
        roots=root_ids,
        grace_s=grace,
        now=moment,
        kept=tuple(walk.kept[build_id] for build_id in sorted(walk.kept)),
        deletable=deletable,
        missing_roots=tuple(sorted(root_ids - folders.keys())),
        missing_references=tuple(sorted(walk.missing)),
        ignored_keys=listing.ignored,
        times_known=listing.times_known,
        folders=folders,
    )

"""Deleting what a plan found deletable, re-checking each build right before it goes: ``apply_gc``.

For each planned build, in order:

1. its folder is listed again and must match the plan's listing object for object (same
   keys, sizes and modification times, no new in-flight temporaries): any write since the
   plan (a new claim, a rewritten metadata.json, a copy landing objects) skips the build;
2. gc claims the build itself (``.ember-claim``, created exclusively) unless an old claim
   is already there, so ``claim_build`` refuses every writer from now on; losing that race
   skips the build. The folder is listed once more after the claim (a writer that does not
   claim, such as ``copy_build``, may have written in between);
3. ``metadata.json`` is deleted first, so a build deleted part way is never complete;
4. every other object of the listing (``delete_prefix`` of the fewest listed keys that cover
   them all); the claim last, so no writer that claims can start over the same id while
   objects of the old build remain.

Before every batch of builds (and at least every ``rescan_interval_s``) the whole storage is
listed again: a build written or changed since the plan that reads from a planned build
protects it (and what it reads from), as does a build ``current_roots()`` now names.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ember.build.gc.listing import BuildFolder, list_folder, list_storage
from ember.build.gc.plan import DEFAULT_GC_WORKERS, DeletableBuild, GcPlan, canonical_roots, read_references
from ember.errors import EmberError, ObjectExists, UsageError
from ember.storage import BuildPaths, LocalStorage, Storage, sweep_stale_temporaries

GC_WRITER = "ember gc (deleting an unreferenced build)"
"""The ``writer`` gc records in the claim it takes on a build it is about to delete."""

DEFAULT_RESCAN_INTERVAL_S = 10.0


@dataclass(frozen=True)
class BuildDeleted:
    build_id: uuid.UUID
    objects: int
    size_bytes: int | None
    age_s: float | None
    reason: str

    @property
    def message(self) -> str:
        return f"- deleted build {self.build_id} ({self.objects} objects, {self.reason})"


@dataclass(frozen=True)
class BuildSkipped:
    """A planned build that was not deleted, and why (something changed since the plan)."""

    build_id: uuid.UUID
    reason: str

    @property
    def message(self) -> str:
        return f"= kept build {self.build_id}: {self.reason}"


@dataclass(frozen=True)
class BuildFailed:
    """A build whose deletion failed part way; its metadata.json may already be gone."""

    build_id: uuid.UUID
    error: str

    @property
    def message(self) -> str:
        return f"! build {self.build_id} not fully deleted: {self.error}"


GcEvent = BuildDeleted | BuildSkipped | BuildFailed


@dataclass(frozen=True)
class GcReport:
    storage_url: str
    deleted: tuple[BuildDeleted, ...]
    skipped: tuple[BuildSkipped, ...]
    failed: tuple[BuildFailed, ...]
    duration_s: float
    stopped: str | None = None
    """Why apply stopped deleting early (a failed rescan), or None: the skipped builds say so too."""

    @property
    def objects_deleted(self) -> int:
        return sum(build.objects for build in self.deleted)

    @property
    def bytes_deleted(self) -> int:
        return sum(build.size_bytes or 0 for build in self.deleted)

    @property
    def ok(self) -> bool:
        return not self.failed and self.stopped is None


class _Protection:
    """Planned builds that must stay after all, refreshed from new listings of the storage."""

    def __init__(
        self,
        storage: Storage,
        plan: GcPlan,
        current_roots: Callable[[], Iterable[uuid.UUID | str]] | None,
        interval_s: float,
    ) -> None:
        self.storage = storage
        self.plan = plan
        self.planned = {build.build_id: build for build in plan.deletable}
        self.current_roots = current_roots
        self.interval_s = interval_s
        self.reasons: dict[uuid.UUID, str] = {}
        self.scanned_at = -float("inf")
        self.stopped: str | None = None
        self.lock = threading.Lock()

    def refresh(self, *, force: bool = False) -> None:
        """Rescan when due; a rescan that fails protects every build not yet deleted."""
        with self.lock:
            if self.stopped is not None or (
                not force and time.monotonic() - self.scanned_at < self.interval_s
            ):
                return
            self.scanned_at = time.monotonic()
            try:
                self._rescan()
            except EmberError as exc:
                self.stopped = f"gc stopped before deleting it: a rescan of {self.storage.url} failed: {exc}"

    def _rescan(self) -> None:
        listing = list_storage(self.storage)
        seeds: list[tuple[uuid.UUID, str]] = []
        if self.current_roots is not None:
            for root in sorted(canonical_roots(self.current_roots()) & self.planned.keys()):
                seeds.append((root, "named by the current roots"))
        for build_id, folder in listing.folders.items():
            before = self.plan.folders.get(build_id)
            if before is not None and before.fingerprint() == folder.fingerprint():
                continue
            if build_id in self.planned:
                seeds.append((build_id, "changed since the plan"))
                continue
            for other in sorted(read_references(self.storage, folder) & self.planned.keys()):
                seeds.append((other, f"read by build {build_id}, written since the plan"))
        self._protect(seeds, listing.folders)

    def _protect(self, seeds: list[tuple[uuid.UUID, str]], folders: dict[uuid.UUID, BuildFolder]) -> None:
        """Protect the seeds and every planned build they read from (headers as listed now)."""
        pending = list(seeds)
        while pending:
            build_id, reason = pending.pop()
            if build_id in self.reasons:
                continue
            self.reasons[build_id] = reason
            folder = folders.get(build_id)
            if folder is None:
                continue
            for other in sorted(read_references(self.storage, folder) & self.planned.keys()):
                pending.append((other, f"read by build {build_id}, which is protected"))

    def reason(self, build_id: uuid.UUID) -> str | None:
        with self.lock:
            return self.reasons.get(build_id, self.stopped)


def _claim_marker() -> bytes:
    """A claim in ``claim_build``'s shape, so a writer refused by it is told who holds the build."""
    return json.dumps(
        {
            "writer": GC_WRITER,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "nonce": secrets.token_hex(8),
        }
    ).encode()


def _same(folder: BuildFolder, planned: BuildFolder, *, ignore: str | None = None) -> bool:
    now = [entry for entry in folder.fingerprint() if entry[0] != ignore]
    return now == [entry for entry in planned.fingerprint() if entry[0] != ignore]


def _delete_build(storage: Storage, planned: DeletableBuild, protection: _Protection) -> GcEvent:
    build_id = planned.build_id
    reason = protection.reason(build_id)
    if reason is not None:
        return BuildSkipped(build_id, reason)
    paths = BuildPaths(build_id)
    folder = list_folder(storage, build_id)
    if not folder.objects and not folder.hidden:
        return BuildSkipped(build_id, "already gone")
    if not _same(folder, planned.folder):
        return BuildSkipped(build_id, "changed since the plan: a writer is using it")
    took_claim = folder.claim is None
    if took_claim:
        try:
            storage.create_exclusive(paths.claim, _claim_marker())
        except ObjectExists:
            return BuildSkipped(build_id, "claimed by a writer since the plan")
        if not _same(list_folder(storage, build_id), planned.folder, ignore=paths.claim):
            storage.delete_prefix(paths.claim)
            return BuildSkipped(build_id, "changed since the plan: a writer is using it")
    deleted = 0
    try:
        if folder.metadata is not None:
            deleted += storage.delete_prefix(paths.metadata)
        rest = [item.key for item in folder.objects if item.key not in (paths.metadata, paths.claim)]
        for prefix in _covering_prefixes(rest, last=paths.claim):
            deleted += storage.delete_prefix(prefix)
        deleted += storage.delete_prefix(paths.claim) - (1 if took_claim else 0)
        if isinstance(storage, LocalStorage):
            _sweep_local_folder(storage, build_id)
        if storage.exists(paths.metadata):
            return BuildFailed(
                build_id,
                f"a writer stored {paths.metadata} while gc was deleting the build (a copy-build of the "
                "same id?): it looks complete but may lack objects; copy or upload it again",
            )
    except EmberError as exc:
        return BuildFailed(build_id, f"{exc} (after deleting {deleted} objects)")
    return BuildDeleted(
        build_id, len(planned.folder.objects), planned.size_bytes, planned.age_s, planned.reason
    )


def _covering_prefixes(keys: list[str], *, last: str) -> list[str]:
    """The fewest listed keys whose ``delete_prefix`` removes all of ``keys`` (``memfile`` takes
    ``memfile.header`` with it), any that would also remove ``last`` put at the end."""
    chosen: list[str] = []
    for key in sorted(keys):
        if not any(key.startswith(prefix) for prefix in chosen):
            chosen.append(key)
    return sorted(chosen, key=lambda prefix: last.startswith(prefix))


def _sweep_local_folder(storage: LocalStorage, build_id: uuid.UUID) -> None:
    """Remove dead writers' temporaries from the emptied folder, then the folder if nothing is left."""
    directory = storage.root / str(build_id)
    sweep_stale_temporaries(directory)
    with contextlib.suppress(OSError):
        directory.rmdir()


def apply_gc(
    storage: Storage,
    plan: GcPlan,
    *,
    current_roots: Callable[[], Collection[uuid.UUID | str]] | None = None,
    allow_no_roots: bool = False,
    workers: int = DEFAULT_GC_WORKERS,
    rescan_interval_s: float = DEFAULT_RESCAN_INTERVAL_S,
    progress: Callable[[GcEvent], None] | None = None,
) -> GcReport:
    """Delete the plan's deletable builds that are still unused and unchanged; see the module steps.

    ``current_roots`` (optional) returns the caller's roots as they are now, asked at every
    rescan; a planned build it names is kept. A plan without roots that would delete a
    complete build is refused (``UsageError``) unless ``allow_no_roots``: an empty root list
    is far more often a caller's bug than a wish to delete every build.

    Remaining race (what the re-checks cannot see): a writer that does not claim and that
    *reuses* a planned build's objects without writing into its folder, between the last
    listing gc makes of that build and its deletion. ``copy_build`` is that writer: it skips
    destination objects identical to the source's. Copying a build whose ancestor gc is
    deleting: the copy's size check of the data it needs fails the copy (no metadata.json,
    no broken build) unless the deletion falls between that check and the copy's
    metadata.json write. Copying onto the very build id gc is deleting: the copy may report
    success for objects gc then removes; if its metadata.json lands after gc deleted the old
    one, gc sees it and reports the build as failed (``BuildFailed``: complete-looking, objects
    missing). A rescan (``rescan_interval_s``) protects builds new or changed builds read from,
    so the window for copies that started since the plan is one rescan interval. Builds being
    resumed are safe only if the caller names them as roots: reading leaves no trace to see.
    """
    if workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")
    if storage.url != plan.storage_url:
        raise UsageError(f"this gc plan was made for {plan.storage_url}, not {storage.url}: plan again")
    if not plan.roots and plan.deletes_complete_builds and not allow_no_roots:
        raise UsageError(
            "no roots given: every complete build older than the grace would be deleted; name the builds "
            "in use as roots, or allow it explicitly (ember gc -all-unreferenced)"
        )
    started = time.monotonic()
    emit = progress or (lambda _event: None)
    protection = _Protection(storage, plan, current_roots, rescan_interval_s)
    events: list[GcEvent] = []
    batch_size = workers * 4
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gc-delete") as pool:
        for start in range(0, len(plan.deletable), batch_size):
            protection.refresh(force=start == 0)
            batch = plan.deletable[start : start + batch_size]
            for event in pool.map(lambda build: _delete_build(storage, build, protection), batch):
                emit(event)
                events.append(event)
    return GcReport(
        storage_url=storage.url,
        deleted=tuple(event for event in events if isinstance(event, BuildDeleted)),
        skipped=tuple(event for event in events if isinstance(event, BuildSkipped)),
        failed=tuple(event for event in events if isinstance(event, BuildFailed)),
        duration_s=time.monotonic() - started,
        stopped=protection.stopped,
    )

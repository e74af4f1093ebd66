"""Garbage collection behind the control plane's deletes: ``GcService``.

Deleting a template or a snapshot, killing a paused sandbox or removing a tag only drops
database rows; the builds those rows named stay in the node storage until gc deletes them.
``GcService.released`` is called after each of those and runs gc in the background; when a
running sandbox ends, ``sandbox_ended`` does the same if no row names its build any more (its
template was deleted while it ran):

* **roots** come from the store (``Store.build_roots``): every template's current build and
  tagged builds, every paused sandbox's build, every running sandbox's build, every build not
  finished yet and the build each of those starts from; plus the builds of the sandboxes in
  the API's catalog (a sandbox being created is there before its row is). Old builds of a
  template that no tag names any more are not roots: what still reads from them (a snapshot
  of a sandbox started from one) keeps them through its headers, which gc follows;
* ``ember.build.gc.plan_gc`` then ``apply_gc`` against the storage (``-storage``, the one
  the nodes use), with the grace period (``-gc-grace``, 24 h by default): a build younger
  than that is never deleted, which also covers builds being written that no row names yet.
  ``apply_gc`` asks for the roots again at each of its rescans;
* never two runs at once: a release during a run asks for one more run after it (releases
  coalesce); every deleted build is logged.

Without ``-storage`` gc is off: deletes drop rows only, and the first release says so once.
``database_roots`` gives the same roots to ``ember gc -db``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Collection

from ember.api.catalog import Catalog
from ember.api.store import Store, open_store
from ember.build.gc import GcReport, apply_gc, plan_gc
from ember.storage import Storage

_log = logging.getLogger(__name__)

DEFAULT_GC_GRACE_S = 24 * 3600.0
ROOTS_TIMEOUT_S = 60.0


async def store_roots(store: Store, catalog: Catalog | None = None) -> set[str]:
    """Every build in use according to the store (and the catalog of running sandboxes)."""
    roots = await store.build_roots()
    if catalog is not None:
        roots.update(live.record.spec.build_id for live in catalog.all())
    return roots


def _as_uuids(roots: Collection[str]) -> list[uuid.UUID]:
    """The roots that are build ids; a row naming something else cannot name a stored build."""
    found = []
    for root in roots:
        try:
            found.append(uuid.UUID(root))
        except ValueError:
            _log.warning("gc: the database names %r as a build, which is not a build id: ignored", root)
    return found


async def database_roots(db_url: str) -> list[uuid.UUID]:
    """The roots the API database at ``db_url`` names (``ember gc -db``)."""
    store = await open_store(db_url)
    try:
        return _as_uuids(await store_roots(store))
    finally:
        await store.close()


class GcService:
    """Runs gc after releases, one run at a time (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        storage: Storage | None,
        grace_s: float = DEFAULT_GC_GRACE_S,
        catalog: Catalog | None = None,
    ) -> None:
        self._store = store
        self.storage = storage
        self.grace_s = grace_s
        self._catalog = catalog
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._told_disabled = False
        self._checks: set[asyncio.Task[None]] = set()
        self.runs = 0
        self.last_report: GcReport | None = None
        self.last_error: str | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def enabled(self) -> bool:
        return self.storage is not None

    def released(self, why: str) -> None:
        """Builds may have stopped being used (``why``, for the log): collect in the background."""
        if self.storage is None:
            if not self._told_disabled:
                self._told_disabled = True
                _log.info(
                    "gc is off (no -storage): %s dropped database rows only; their builds stay in the node "
                    "storage until 'ember gc -db <url> -storage <url>' runs",
                    why,
                )
            return
        _log.info("gc requested: %s", why)
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._idle.clear()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="ember-gc")

    def sandbox_ended(self, build_id: str, why: str) -> None:
        """A sandbox of ``build_id`` ended: collect if nothing else names that build any more.

        A running sandbox is a root, so deleting its template while it ran kept the build;
        this releases it when that sandbox goes. Most builds are still named (a live template,
        a snapshot), and the check (one roots query) keeps those from costing a gc run each.
        """
        if self.storage is None:
            return
        check = asyncio.get_running_loop().create_task(self._release_if_unnamed(build_id, why))
        self._checks.add(check)
        check.add_done_callback(self._checks.discard)

    async def _release_if_unnamed(self, build_id: str, why: str) -> None:
        try:
            roots = await store_roots(self._store, self._catalog)
        except Exception as exc:  # the next release collects what this one would have
            _log.warning("gc: cannot tell whether build %s is still in use: %s", build_id, exc)
            return
        if build_id not in roots:
            self.released(why)

    async def _loop(self) -> None:
        try:
            while True:
                self._again = False
                await self.run_once()
                if not self._again:
                    return
        finally:
            self._idle.set()

    async def run_once(self) -> GcReport | None:
        """One plan and apply now (callers other than ``released`` must not overlap it)."""
        storage = self.storage
        if storage is None:
            return None
        loop = asyncio.get_running_loop()

        def current_roots() -> list[uuid.UUID]:  # on apply_gc's thread, at each rescan
            future = asyncio.run_coroutine_threadsafe(store_roots(self._store, self._catalog), loop)
            return _as_uuids(future.result(ROOTS_TIMEOUT_S))

        try:
            roots = _as_uuids(await store_roots(self._store, self._catalog))
            if not roots:
                # An empty root list would delete every complete build: a database pointed at the
                # wrong storage is likelier than a storage nothing uses. Nothing is deleted.
                _log.warning("gc of %s skipped: the database names no build in use", storage.url)
                return None
            plan = await asyncio.to_thread(plan_gc, storage, roots, grace_s=self.grace_s)
            report = await asyncio.to_thread(apply_gc, storage, plan, current_roots=current_roots)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            _log.exception("gc of %s failed; the next delete tries again", storage.url)
            return None
        finally:
            self.runs += 1
        self.last_report = report
        self.last_error = None
        for deleted in report.deleted:
            _log.info("gc: %s", deleted.message.removeprefix("- "))
        for skipped in report.skipped:
            _log.info("gc: %s", skipped.message.removeprefix("= "))
        for failed in report.failed:
            _log.warning("gc: %s", failed.message.removeprefix("! "))
        _log.info(
            "gc of %s: deleted %d builds (%d objects, %d bytes) in %.1f s; kept %d (%d roots)%s",
            storage.url,
            len(report.deleted),
            report.objects_deleted,
            report.bytes_deleted,
            report.duration_s,
            len(plan.kept),
            len(plan.roots),
            f"; stopped: {report.stopped}" if report.stopped else "",
        )
        return report

    async def wait_idle(self) -> None:
        """Until no run is going or asked for (nor a ``sandbox_ended`` check that may ask)."""
        while self._checks:
            await asyncio.gather(*self._checks, return_exceptions=True)
        await self._idle.wait()

    async def stop(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

"""Garbage collection of builds: delete what no live template, snapshot or sandbox needs.

Every pause stores a new build and nothing else deletes old ones, so a storage grows until
gc runs. gc counts references through the headers: a build is kept while a root (a live
template's build, a paused sandbox's snapshot, a running sandbox's build) or another kept
build's header reads from it; anything else older than a grace period is deleted::

    plan = plan_gc(storage, roots, grace_s=24 * 3600)   # reads only: listing + kept headers
    report = apply_gc(storage, plan)                    # re-checks each build, then deletes it

Safety, in short (details in ``plan`` and ``apply``):

* reachability is transitive and age-blind: nothing a kept build reads from is deleted;
* a folder that changed within the grace, or whose ``.ember-claim`` is that young, is kept
  together with whatever it reads from: uploads, copies and pauses in progress are untouched;
* each build is listed again right before it goes and must match the plan exactly; gc then
  claims it (``claim_build`` refuses writers from that moment), deletes ``metadata.json``
  first (a partly deleted build is never complete) and the claim last;
* without roots, ``apply_gc`` refuses to delete complete builds unless told to.

``listing`` gets sizes and modification times per object from each backend.
"""

from ember.build.gc.apply import (
    DEFAULT_RESCAN_INTERVAL_S,
    GC_WRITER,
    BuildDeleted,
    BuildFailed,
    BuildSkipped,
    GcEvent,
    GcReport,
    apply_gc,
)
from ember.build.gc.listing import BuildFolder, StoredObject, list_folder, list_storage
from ember.build.gc.plan import DEFAULT_GC_WORKERS, DeletableBuild, GcPlan, KeepKind, KeptBuild, plan_gc

__all__ = [
    "DEFAULT_GC_WORKERS",
    "DEFAULT_RESCAN_INTERVAL_S",
    "GC_WRITER",
    "BuildDeleted",
    "BuildFailed",
    "BuildFolder",
    "BuildSkipped",
    "DeletableBuild",
    "GcEvent",
    "GcPlan",
    "GcReport",
    "KeepKind",
    "KeptBuild",
    "StoredObject",
    "apply_gc",
    "list_folder",
    "list_storage",
    "plan_gc",
]

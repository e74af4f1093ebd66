"""Garbage collection of 1,000 builds on LocalStorage vs plainly listing and deleting the same objects.

Setup: 1,000 synthetic builds (--quick: 200) in chains of 10 layers, each with real V3
headers over 64 KiB devices (ember.build.gc.synthetic), 6 objects per build, every file
and folder dated two days back. Roots: the top of every even chain and the 4th layer of
every odd one, so the 6 upper layers of odd chains (~30 % of the builds) are unreferenced,
plus the odd lower layer whose every block a later layer overwrote (the expected set comes
from a walk over the stored header records, done here).

Measured per run on a fresh copy of the store (median of --repeat runs):
  * ember: plan_gc (listing with stat, header reads of the 70 % kept) + apply_gc (rescan,
    per-build re-check, claim, metadata.json first, every other object, claim last);
  * baseline, same run: Storage.list("") then delete_prefix("{build}/") of the same builds.

    python bench/bench_gc.py [--quick] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from ember.build.gc import apply_gc, plan_gc
from ember.build.gc.synthetic import TimedMemoryStorage, write_synthetic_chain
from ember.header import NIL_UUID, deserialize_header
from ember.storage import LocalStorage, Storage

CHAIN = 10
KEPT_LAYERS_OF_ODD_CHAINS = 4


def unreachable(storage: Storage, roots: list[uuid.UUID]) -> set[uuid.UUID]:
    """Builds no root reads from, through the raw header records, transitively."""
    seen: set[uuid.UUID] = set()
    pending = list(roots)
    while pending:
        build = pending.pop()
        if build not in seen:
            seen.add(build)
            for name in ("memfile.header", "rootfs.ext4.header"):
                header = deserialize_header(storage.get(f"{build}/{name}"))
                pending += [row.build_id for row in header.mappings.records() if row.build_id != NIL_UUID]
    return {uuid.UUID(key.split("/", 1)[0]) for key in storage.list("")} - seen


def make_store(root: Path, builds: int) -> tuple[list[uuid.UUID], set[uuid.UUID]]:
    """Write the chains in memory, then as plain files (no fsync: setup, not what is measured)."""
    memory = TimedMemoryStorage("bench-gc")
    roots: list[uuid.UUID] = []
    for chain_index in range(builds // CHAIN):
        chain = write_synthetic_chain(memory, [uuid.uuid4() for _ in range(CHAIN)])
        top = CHAIN if chain_index % 2 == 0 else KEPT_LAYERS_OF_ODD_CHAINS
        roots.append(chain[top - 1].build_id)
    doomed = unreachable(memory, roots)
    old = time.time() - 2 * 86400
    for key in memory.list(""):
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(memory.get(key))
        os.utime(path, (old, old))
    for folder in root.iterdir():
        os.utime(folder, (old, old))
    return roots, doomed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="200 builds instead of 1,000")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side (default 3)")
    args = parser.parse_args()
    builds = 200 if args.quick else 1000

    with tempfile.TemporaryDirectory(prefix="ember-bench-gc-", dir=Path.cwd()) as scratch:
        pristine = Path(scratch) / "pristine"
        roots, doomed = make_store(pristine, builds)
        objects = sum(1 for _ in pristine.rglob("*") if _.is_file())
        deleted_objects = 6 * len(doomed)
        print(
            f"{builds} builds, {objects} objects; "
            f"{len(doomed)} builds ({deleted_objects} objects) unreferenced"
        )

        plans: list[float] = []
        applies: list[float] = []
        baselines: list[float] = []
        for run in range(args.repeat):
            ember_root, plain_root = Path(scratch) / f"ember-{run}", Path(scratch) / f"plain-{run}"
            shutil.copytree(pristine, ember_root, copy_function=shutil.copy2)
            shutil.copytree(pristine, plain_root, copy_function=shutil.copy2)
            for folder in [*ember_root.iterdir(), *plain_root.iterdir()]:
                os.utime(folder, (time.time() - 2 * 86400,) * 2)

            plain = LocalStorage(plain_root)
            start = time.perf_counter()
            listed = {key.split("/", 1)[0] for key in plain.list("")}
            for build in doomed:
                assert str(build) in listed
                plain.delete_prefix(f"{build}/")
            baselines.append(time.perf_counter() - start)

            storage = LocalStorage(ember_root)
            start = time.perf_counter()
            plan = plan_gc(storage, roots, grace_s=86400)
            planned = time.perf_counter()
            report = apply_gc(storage, plan)
            applies.append(time.perf_counter() - planned)
            plans.append(planned - start)
            deleted = {build.build_id for build in report.deleted}
            assert deleted == doomed, (len(deleted), len(doomed), report.skipped[:3], report.failed[:3])
            assert report.objects_deleted == deleted_objects
            assert sorted(p.name for p in ember_root.iterdir()) == sorted(
                p.name for p in plain_root.iterdir()
            )

        plan_s, apply_s, base_s = (statistics.median(values) for values in (plans, applies, baselines))
        total_s = plan_s + apply_s
        print(f"{'ember plan_gc':34} {plan_s:7.3f} s  {objects / plan_s:9,.0f} objects listed/s")
        print(
            f"{'ember apply_gc':34} {apply_s:7.3f} s  {deleted_objects / apply_s:9,.0f} objects deleted/s  "
            f"{len(doomed) / apply_s:7,.0f} builds/s"
        )
        print(
            f"{'ember gc total':34} {total_s:7.3f} s  {builds / total_s:9,.0f} builds examined/s  "
            f"{deleted_objects / total_s:7,.0f} objects deleted/s"
        )
        print(
            f"{'baseline list + delete_prefix':34} {base_s:7.3f} s  {deleted_objects / base_s:9,.0f} "
            f"objects deleted/s  ({total_s / base_s:.1f}x the baseline's time)"
        )


if __name__ == "__main__":
    main()

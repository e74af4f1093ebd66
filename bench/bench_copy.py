"""copy_build local -> local vs shutil.copyfile of the same objects.

Setup: a 4-generation rootfs chain (bench_reader's generator) plus a header-less memfile and a
snapfile, ~512 MiB of objects in all (--quick: ~128 MiB), on LocalStorage in a temp dir. The page
cache is not flushed: sources are warm for both sides, and dirty pages are written back by the
kernel on its own schedule (except where fsync is named).

Baselines, measured in the same run on the same object list:
  * shutil.copyfile of each object, one after the other (no fsync);
  * the same followed by fsync of each copy, as copy_build makes every object durable before
    renaming it into place (so metadata.json never lands before the data it describes).

    python bench/bench_copy.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_reader import build_chain
from ember.build.copy import copy_build, referenced_objects
from ember.storage import LocalStorage


def copy_files(source: Path, destination: Path, keys: list[str], *, fsync: bool) -> None:
    for key in keys:
        target = destination / key
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / key, target)
        if fsync:
            fd = os.open(target, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="~128 MiB of objects instead of ~512 MiB")
    args = parser.parse_args()
    device_bytes = (80 if args.quick else 352) << 20
    memfile_bytes = (32 if args.quick else 64) << 20
    rng = np.random.default_rng(7)

    with tempfile.TemporaryDirectory(prefix="ember-bench-copy-", dir=Path.cwd()) as scratch:
        root = Path(scratch)
        source = LocalStorage(root / "source")
        top, _ = build_chain(source, device_bytes, rng)
        source.put(f"{top}/memfile", rng.bytes(memfile_bytes))
        source.put(f"{top}/snapfile", rng.bytes(1 << 20))
        metadata = {
            "version": 2,
            "template": {"build_id": str(top), "kernel_version": "k", "firecracker_version": "f"},
        }
        source.put(f"{top}/metadata.json", json.dumps(metadata).encode())
        _, keys = referenced_objects(top, source)
        keys.append(f"{top}/metadata.json")
        total = sum(source.size(key) for key in keys)
        print(f"{len(keys)} objects, {total / (1 << 20):.0f} MiB (page cache not flushed)")

        def run(name: str, action: object) -> float:
            start = time.perf_counter()
            action()  # type: ignore[operator]
            seconds = time.perf_counter() - start
            print(f"{name:44} {seconds:6.2f} s {total / (1 << 20) / seconds:7.0f} MiB/s")
            return seconds

        base = run("shutil.copyfile", lambda: copy_files(source.root, root / "plain", keys, fsync=False))
        base_sync = run(
            "shutil.copyfile + fsync", lambda: copy_files(source.root, root / "synced", keys, fsync=True)
        )
        destination = LocalStorage(root / "destination")
        ours = run("copy_build (20 workers, fsync)", lambda: copy_build(top, source, destination))
        run("copy_build again (all skipped by CRC32C)", lambda: copy_build(top, source, destination))
        for key in keys:
            if (root / "plain" / key).read_bytes() != destination.get(key):
                raise SystemExit(f"copy_build produced different bytes for {key}")
        print(f"ratio vs shutil.copyfile:         {base / ours:.2f}x")
        print(f"ratio vs shutil.copyfile + fsync: {base_sync / ours:.2f}x")


if __name__ == "__main__":
    main()

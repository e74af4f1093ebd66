"""Pause: seconds per GiB of dirty guest memory, vs a plain copy of the same bytes.

Setup: ``ember create-build`` of the default template (512 MiB guest) into a temp storage.
Each run resumes it (``Sandbox.resume`` through a ``Node`` in this process, the guest in its
sandbox process), has the guest dirty N MiB (random bytes written into a tmpfs, which lives in
guest RAM), then pauses into a new build on local storage (``Sandbox.pause``): ``sync`` in the
guest, snapshot, QEMU exit (its dirty pages written back through the FUSE memory file), memory
and rootfs diff export, upload. The figure is the pause's own duration as the sandbox process
measures it (``PauseResult.duration_s``, what ``resume-build`` prints as "paused in"), and beside
it the caller's wall time of ``Sandbox.pause``, which also includes ending the sandbox process
and releasing its slot and workspace. The baseline copies the new build's memfile data object
(the dirty pages, packed) to another file with ``shutil.copyfile`` + fsync: the least I/O any
pause of that memory has to do.

Needs root, /dev/fuse, qemu-system-x86_64 and a provisioned kernel (HOST_KERNELS_DIR,
default /var/cache/ember/kernels).

    python bench/bench_pause.py            # 64 and 192 MiB dirty
    python bench/bench_pause.py --quick    # 64 MiB dirty
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from bench_resume import KERNELS, create, node_env
from ember.sandbox import Node, ResumeOptions, Sandbox
from ember.storage import MEMFILE, BuildPaths

DIRTY = "mkdir -p /mnt/dirty && mount -t tmpfs -o size={size}M tmpfs /mnt/dirty && " \
        "dd if=/dev/urandom of=/mnt/dirty/fill bs=1M count={mib} 2>/dev/null"  # fmt: skip


def copy_seconds(source: Path, target: Path) -> float:
    started = time.monotonic()
    shutil.copyfile(source, target)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run, 64 MiB dirty")
    args = parser.parse_args()
    sizes = (64,) if args.quick else (64, 192)
    os.environ.setdefault("HOST_KERNELS_DIR", KERNELS)
    with tempfile.TemporaryDirectory(prefix="bench-pause-", dir="/var/tmp") as scratch:
        root = Path(scratch)
        store = root / "store"
        build_id = create(store)
        print(
            "pause of a 512 MiB guest after dirtying N MiB (baseline: copyfile + fsync of the dirty pages); "
            "measured under whatever else runs on this machine"
        )
        measured: list[tuple[float, float, float]] = []
        with Node(str(store), env=node_env(str(store), root, "pause")) as node:
            for mib in sizes:
                node.workers.wait_ready()
                with Sandbox.resume(node, ResumeOptions(build_id, prefetch=False)) as sandbox:
                    done = sandbox.envd.run(DIRTY.format(size=mib + 16, mib=mib), timeout_s=600)
                    if done.exit_code != 0:
                        problem = done.stderr.decode(errors="replace")
                        raise SystemExit(f"dirtying guest memory failed: {problem}")
                    started = time.monotonic()
                    paused = sandbox.pause(uuid.uuid4())
                    call_s = time.monotonic() - started
                data = store / "templates" / BuildPaths(paused.build_id).data_object(MEMFILE)
                data_gib = data.stat().st_size / (1 << 30)
                copied = copy_seconds(data, root / f"copy-{mib}")
                pause_s = paused.duration_s
                print(
                    f"  {mib:4d} MiB dirty: memfile diff {data_gib * 1024:6.1f} MiB   "
                    f"pause {pause_s:6.2f} s ({pause_s / data_gib:6.2f} s/GiB; "
                    f"Sandbox.pause call {call_s:5.2f} s)   copy {copied:5.2f} s "
                    f"({copied / data_gib:5.2f} s/GiB)   {pause_s / copied:5.1f}x the copy"
                )
                measured.append((data_gib, pause_s, copied))
        if len(measured) == 2:
            (small_gib, small_s, small_copy), (large_gib, large_s, large_copy) = measured
            extra_gib = large_gib - small_gib
            print(
                f"  per extra GiB of dirty memory: pause {(large_s - small_s) / extra_gib:5.2f} s/GiB, "
                f"copy {(large_copy - small_copy) / extra_gib:5.2f} s/GiB (the fixed part is guest sync, "
                "device state save and QEMU exit)"
            )


if __name__ == "__main__":
    main()

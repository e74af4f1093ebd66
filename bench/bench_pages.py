"""Lazy guest memory: page-serving rate of the FUSE memory file vs a plain file mmap.

Setup: a memfile build of random (non-zero) bytes on LocalStorage in a temp dir (its data
object stays in the page cache), opened with ``BuildFile`` and mounted with ``LazyMemory``
(a fresh mount per run, so every page is a miss that Python serves). A child process maps
the file MAP_SHARED, as QEMU does, and touches it; the baseline child maps the flat RAM
file holding the same bytes (page cache warm, so its faults are minor faults). Patterns:

* 4 KiB faults: ``MADV_RANDOM``, one byte touched per 4 KiB page in random page order
  (one FUSE read per page); faults/s and MB/s;
* sequential: default readahead, one byte per page in ascending order (FUSE reads of the
  readahead window);
* 2 MiB pages: ``MADV_POPULATE_READ`` of each 2 MiB page, pages in random order, with
  2 MiB overlay blocks (the closest a file mapping gets to a hugepage fault).

    python bench/bench_pages.py            # 256 MiB guest
    python bench/bench_pages.py --quick    # 64 MiB guest

Needs root, /dev/fuse and fusermount3 (Debian fuse3).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ember.build import BuildFile
from ember.header import HUGEPAGE_SIZE, PAGE_SIZE, serialize_header
from ember.memory import LazyMemory, export_memory
from ember.storage import MEMFILE, BuildPaths, LocalStorage

TOUCH_CHILD = r"""
import json, mmap, os, sys, time
import numpy as np
path, pattern = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
pages = np.frombuffer(m, dtype=np.uint8)
order = np.random.default_rng(1).permutation
start = time.perf_counter()
if pattern == "random4k":
    m.madvise(mmap.MADV_RANDOM)
    total = int(pages[order(size // 4096) * 4096].sum())
elif pattern == "sequential":
    total = int(pages[::4096].sum())
else:
    for page in order(size // (2 << 20)).tolist():
        m.madvise(22, page * (2 << 20), 2 << 20)  # MADV_POPULATE_READ
    total = int(pages[::4096].sum())
elapsed = time.perf_counter() - start
del pages
m.close()
os.close(fd)
print(json.dumps({"elapsed_s": elapsed, "checksum": total}))
"""


@dataclass(frozen=True)
class Touch:
    elapsed_s: float
    checksum: int


def touch(path: Path, pattern: str) -> Touch:
    done = subprocess.run(
        [sys.executable, "-c", TOUCH_CHILD, str(path), pattern], capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout)
    return Touch(result["elapsed_s"], result["checksum"])


def store_memfile(
    storage: LocalStorage, ram: Path, size_bytes: int, block_size: int, root: Path
) -> uuid.UUID:
    build = uuid.uuid4()
    data = root / f"memfile-{block_size}"
    header = export_memory(ram, size_bytes, block_size, build, data)
    paths = BuildPaths(build)
    storage.put(paths.header(MEMFILE), serialize_header(header))
    storage.put_file(paths.data_object(MEMFILE), data)
    data.unlink()
    return build


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="64 MiB guest instead of 256 MiB")
    parser.add_argument("--runs", type=int, default=2, help="runs per scenario; the best is shown")
    args = parser.parse_args()
    size_bytes = (64 if args.quick else 256) << 20
    rng = np.random.default_rng(5)

    with tempfile.TemporaryDirectory(prefix="ember-bench-pages-") as scratch:
        root = Path(scratch)
        ram = root / "ram.img"
        ram.write_bytes(rng.integers(1, 256, size_bytes, dtype=np.uint8).tobytes())
        storage = LocalStorage(root / "storage")
        builds = {
            block: store_memfile(storage, ram, size_bytes, block, root)
            for block in (PAGE_SIZE, HUGEPAGE_SIZE)
        }
        print(
            f"guest RAM {size_bytes >> 20} MiB, best of {args.runs} runs; ours = FUSE memory file, "
            "baseline = plain file mmap (page cache warm)"
        )
        print(f"{'scenario':44} {'ours':>22} {'baseline':>22} {'ratio':>7}")
        for label, pattern, block in (
            ("4 KiB faults, MADV_RANDOM, 4 KiB blocks", "random4k", PAGE_SIZE),
            ("4 KiB faults, MADV_RANDOM, 2 MiB blocks", "random4k", HUGEPAGE_SIZE),
            ("sequential, readahead, 4 KiB blocks", "sequential", PAGE_SIZE),
            ("sequential, readahead, 2 MiB blocks", "sequential", HUGEPAGE_SIZE),
            ("2 MiB pages (POPULATE_READ), 2 MiB blocks", "populate2m", HUGEPAGE_SIZE),
        ):
            ours_s, base_s = float("inf"), float("inf")
            for _ in range(args.runs):
                memfile = BuildFile.open(storage, builds[block], MEMFILE)
                with LazyMemory(memfile, root, block) as lazy:
                    ours = touch(lazy.path, pattern)
                    served = lazy.stats()
                baseline = touch(ram, pattern)
                if ours.checksum != baseline.checksum:
                    raise SystemExit(f"{label}: the memory file served different bytes than the RAM file")
                ours_s, base_s = min(ours_s, ours.elapsed_s), min(base_s, baseline.elapsed_s)
            unit = (2 << 20) if pattern == "populate2m" else PAGE_SIZE
            count = size_bytes // unit
            mib = size_bytes / (1 << 20)
            print(
                f"{label:44} {count / ours_s:9,.0f}/s {mib / ours_s:7,.0f} MiB/s "
                f"{count / base_s:9,.0f}/s {mib / base_s:7,.0f} MiB/s {ours_s / base_s:6.1f}x slower"
            )
            print(f"{'':44} FUSE reads {served.reads:,}, {served.read_bytes >> 20} MiB (last run)")


if __name__ == "__main__":
    main()

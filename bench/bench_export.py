"""Copy-on-write overlay: diff export, sequential reads and writes, each next to a flat-file baseline.

Setup: a device over a flat base image file, 10 % of its blocks written through the overlay
(half in clustered runs of 8-256 blocks, half as scattered single blocks). Then:

* export: ``export_diff`` of the dirty blocks vs one ``copy_file_range`` (and one
  ``shutil.copyfileobj``) of a file holding the same number of bytes contiguously;
* sequential 4 MiB reads of the whole overlay vs ``os.preadv`` of a flat file of the same image;
* sequential 4 MiB writes of non-zero data into a fresh overlay vs ``os.pwrite`` into a sparse file.

Everything is served from and written to the page cache (nothing is synced), so the figures
compare CPU and copy costs.

    python bench/bench_export.py            # 1 GiB device
    python bench/bench_export.py --quick    # 256 MiB device
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ember.block import CowCache, Overlay, export_diff
from ember.header import empty_device_header

BLOCK = 4096
IO_BYTES = 4 << 20
DIRTY_FRACTION = 0.10


class FileDevice:
    """A read-only base device over a local file."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._size = path.stat().st_size

    @property
    def size(self) -> int:
        return self._size

    def readinto(self, buffer: bytearray | memoryview, offset: int) -> int:
        return os.preadv(self._fd, [buffer], offset)

    def close(self) -> None:
        os.close(self._fd)


def dirty_mask(blocks: int, rng: np.random.Generator) -> np.ndarray:
    """About DIRTY_FRACTION of ``blocks``: half in clustered runs, half scattered singles."""
    mask = np.zeros(blocks, dtype=bool)
    target = int(blocks * DIRTY_FRACTION)
    while mask.sum() < target // 2:
        start = int(rng.integers(0, blocks - 256))
        mask[start : start + int(rng.integers(8, 257))] = True
    while mask.sum() < target:
        mask[rng.integers(0, blocks, target - int(mask.sum()))] = True
    return mask


def write_pattern(path: Path, size_bytes: int, rng: np.random.Generator) -> None:
    """A non-zero image: one random 4 MiB chunk repeated (cheap to make, never all-zero blocks)."""
    chunk = (rng.integers(1, 256, IO_BYTES, dtype=np.uint8)).tobytes()
    with path.open("wb") as out:
        for _ in range(size_bytes // IO_BYTES):
            out.write(chunk)


def compare(runs: int, ours: Callable[[], float], baseline: Callable[[], float]) -> tuple[float, float]:
    """Best time of each side, alternating them so both meet the same background load."""
    ours_s, base_s = float("inf"), float("inf")
    for _ in range(runs):
        ours_s = min(ours_s, ours())
        base_s = min(base_s, baseline())
    return ours_s, base_s


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def row(name: str, total_bytes: int, times: tuple[float, float]) -> None:
    ours_s, base_s = times
    mib = total_bytes / (1 << 20)
    print(f"{name:46} {mib / ours_s:8.0f} MiB/s {mib / base_s:8.0f} MiB/s {base_s / ours_s:6.2f}x")


def fill_overlay(overlay: Overlay, mask: np.ndarray, rng: np.random.Generator) -> int:
    """Write random data into every masked block run; returns the bytes written."""
    blocks = np.flatnonzero(mask)
    breaks = np.flatnonzero(np.diff(blocks) != 1) + 1
    starts = blocks[np.concatenate(([0], breaks))].tolist()
    ends = (blocks[np.concatenate((breaks - 1, [len(blocks) - 1]))] + 1).tolist()
    payload = rng.integers(1, 256, 256 * BLOCK, dtype=np.uint8).tobytes()
    for start, end in zip(starts, ends, strict=True):
        overlay.write_at(payload[: (end - start) * BLOCK], start * BLOCK)
    return len(blocks) * BLOCK


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="256 MiB device instead of 1 GiB")
    args = parser.parse_args()
    size_bytes = (256 if args.quick else 1024) << 20
    rng = np.random.default_rng(7)

    with tempfile.TemporaryDirectory(prefix="ember-bench-export-") as scratch:
        root = Path(scratch)
        base_path = root / "base.img"
        write_pattern(base_path, size_bytes, rng)
        base = FileDevice(base_path)
        overlay = Overlay(base, CowCache.create(root, "rootfs-bench", size_bytes))
        mask = dirty_mask(size_bytes // BLOCK, rng)
        dirty_bytes = fill_overlay(overlay, mask, rng)
        runs = int(np.count_nonzero(np.diff(mask.astype(np.int8)) == 1)) + int(mask[0])
        print(
            f"device {size_bytes >> 20} MiB, {dirty_bytes >> 20} MiB dirty in {runs} runs "
            f"({DIRTY_FRACTION:.0%} of blocks)"
        )
        print(f"{'scenario':46} {'ours':>14} {'baseline':>14} {'ratio':>7}")

        parent = empty_device_header(uuid.uuid4(), size_bytes, BLOCK)
        diff_path = root / "rootfs.diff"
        contiguous = root / "contiguous.bin"
        contiguous.write_bytes(rng.integers(1, 256, dirty_bytes, dtype=np.uint8).tobytes())
        copy_path = root / "copy.bin"

        def kernel_copy() -> float:
            with contiguous.open("rb") as source, copy_path.open("wb") as target:
                start = time.perf_counter()
                done = 0
                while done < dirty_bytes:
                    done += os.copy_file_range(source.fileno(), target.fileno(), dirty_bytes - done)
                return time.perf_counter() - start

        def buffered_copy() -> float:
            with contiguous.open("rb") as source, copy_path.open("wb") as target:
                return timed(lambda: shutil.copyfileobj(source, target, IO_BYTES))

        def export() -> float:
            diff_path.unlink(missing_ok=True)
            return timed(lambda: export_diff(overlay, parent, uuid.uuid4(), diff_path))

        os.sync()  # settle the setup's writeback so it does not land in either side's timing
        row("export_diff vs copy_file_range (one file)", dirty_bytes, compare(5, export, kernel_copy))
        row("export_diff vs shutil.copyfileobj", dirty_bytes, compare(5, export, buffered_copy))
        if diff_path.stat().st_size != dirty_bytes:
            raise SystemExit("export_diff wrote a diff of the wrong size")

        flat_path = root / "flat.img"
        buffer = bytearray(IO_BYTES)
        with flat_path.open("wb") as flat:
            for offset in range(0, size_bytes, IO_BYTES):
                overlay.readinto(buffer, offset)
                flat.write(buffer)
        flat_fd = os.open(flat_path, os.O_RDONLY)
        offsets = range(0, size_bytes, IO_BYTES)
        row(
            "sequential 4 MiB readinto vs os.preadv",
            size_bytes,
            compare(
                3,
                lambda: timed(lambda: [overlay.readinto(buffer, o) for o in offsets]),
                lambda: timed(lambda: [os.preadv(flat_fd, [buffer], o) for o in offsets]),
            ),
        )
        os.close(flat_fd)
        overlay.close()
        flat_path.unlink()

        payload = rng.integers(1, 256, IO_BYTES, dtype=np.uint8).tobytes()

        def overlay_writes() -> float:
            with Overlay(base, CowCache.create(root, "rootfs-write", size_bytes)) as fresh:
                start = time.perf_counter()
                for offset in offsets:
                    fresh.write_at(payload, offset)
                return time.perf_counter() - start

        def flat_writes() -> float:
            fd = os.open(root / "write.img", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.ftruncate(fd, size_bytes)
            elapsed = timed(lambda: [os.pwrite(fd, payload, o) for o in offsets])
            os.close(fd)
            (root / "write.img").unlink()
            return elapsed

        row("sequential 4 MiB write_at vs os.pwrite", size_bytes, compare(2, overlay_writes, flat_writes))
        base.close()


if __name__ == "__main__":
    main()

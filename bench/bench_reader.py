"""Layered reads through BuildFile vs reads of one flat file holding the same device bytes.

Setup: a rootfs-like device (4 KiB blocks) in a fragmented 4-generation chain on LocalStorage,
read through a warm ChunkCache (every chunk fetched once before timing), and straight from the
LocalStorage (rows marked "local"). The flat baseline is the expected device image in one file.
Both sides are served from the page cache (nothing is flushed), so the figures compare CPU and
copy costs: a warm layered read is one native call copying from mapped chunk files or objects.

The headline is sequential ``readinto`` vs ``os.preadv``: both fill one reused buffer, which
is how a block server reads. ``read_at`` vs ``os.pread`` allocate a new result per read on
both sides; each result is dropped before the next read, as a server drops a reply once sent
(keeping them all alive would time page faults on fresh memory instead of the read path).

    python bench/bench_reader.py            # 256 MiB device
    python bench/bench_reader.py --quick    # 64 MiB device
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ember.build.reader import BuildFile
from ember.header import NIL_UUID, DiffMetadata, Header, Mapping, MappingTable, Metadata, serialize_header
from ember.storage import ChunkCache, LocalStorage

BLOCK = 4096
READ_BYTES = 4 << 20
RANDOM_READS = 20_000
GENERATIONS = 4


def build_chain(storage: LocalStorage, size_bytes: int, rng: np.random.Generator) -> tuple[uuid.UUID, bytes]:
    """Store a fragmented chain; returns the top build and the expected flat image."""
    blocks = size_bytes // BLOCK
    image = np.zeros(size_bytes, dtype=np.uint8)
    builds = [uuid.uuid4() for _ in range(GENERATIONS)]
    header: Header | None = None
    for generation, build in enumerate(builds):
        if generation == 0:
            dirty = np.flatnonzero(rng.random(blocks) < 0.95).astype(np.uint64)
            empty = np.array([], dtype=np.uint64)
        else:
            mask = np.zeros(blocks, dtype=np.uint8)
            # About 10% of the device rewritten per layer in runs of 1-31 blocks, ~0.3% zeroed.
            runs, zeroed = blocks // 160, blocks // 2400
            for start, length in zip(rng.integers(0, blocks, runs), rng.integers(1, 32, runs), strict=True):
                mask[start : start + length] = 1
            for start, length in zip(
                rng.integers(0, blocks, zeroed), rng.integers(1, 16, zeroed), strict=True
            ):
                mask[start : start + length] = 2
            dirty = np.flatnonzero(mask == 1).astype(np.uint64)
            empty = np.flatnonzero(mask == 2).astype(np.uint64)
        payload = rng.integers(0, 256, len(dirty) * BLOCK, dtype=np.uint8)
        for block in empty.tolist():
            image[block * BLOCK : (block + 1) * BLOCK] = 0
        image.reshape(blocks, BLOCK)[dirty.astype(np.int64)] = payload.reshape(-1, BLOCK)
        diff = DiffMetadata(dirty=dirty, empty=empty, block_size=BLOCK)
        if header is None:
            # The template layer: its dirty blocks laid over an all-nil device, at generation 0.
            metadata = Metadata.new_template(build, BLOCK, size_bytes)
            nil = Header(metadata, MappingTable.from_records([Mapping(0, size_bytes, NIL_UUID, 0)]))
            header = Header(metadata, diff.to_diff_header(nil, build).mappings)
        else:
            header = diff.to_diff_header(header, build)
        storage.put(f"{build}/rootfs.ext4", payload.tobytes())
        storage.put(f"{build}/rootfs.ext4.header", serialize_header(header))
    return builds[-1], image.tobytes()


def each(offsets: Sequence[int], read: Callable[[int], object]) -> Callable[[], None]:
    """A pass that reads at every offset and drops each result, as a server does once it is sent."""

    def run() -> None:
        for offset in offsets:
            read(offset)

    return run


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def best_of_pair(
    runs: int, ours: Callable[[], object], baseline: Callable[[], object]
) -> tuple[float, float]:
    """Best times of both sides, run alternately so a busy neighbour slows both alike."""
    ours_s, base_s = float("inf"), float("inf")
    for _ in range(runs):
        ours_s = min(ours_s, timed(ours))
        base_s = min(base_s, timed(baseline))
    return ours_s, base_s


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="64 MiB device instead of 256 MiB")
    args = parser.parse_args()
    size_bytes = (64 if args.quick else 256) << 20
    rng = np.random.default_rng(42)

    with tempfile.TemporaryDirectory(prefix="ember-bench-reader-") as scratch:
        root = Path(scratch)
        local = LocalStorage(root / "templates")
        top, image = build_chain(local, size_bytes, rng)
        flat_path = root / "flat.img"
        flat_path.write_bytes(image)
        device = BuildFile.open(ChunkCache(local, root / "cache"), top, "rootfs.ext4")
        mappings = len(device.header.mappings)
        print(f"device {size_bytes >> 20} MiB, {GENERATIONS} generations, {mappings} mappings")

        def sequential_ours() -> str:
            digest = hashlib.blake2b()
            for offset in range(0, size_bytes, READ_BYTES):
                digest.update(device.read_at(offset, READ_BYTES))
            return digest.hexdigest()

        local_device = BuildFile.open(local, top, "rootfs.ext4")
        expected = hashlib.blake2b(image).hexdigest()
        if sequential_ours() != expected:  # also warms the chunk cache
            raise SystemExit("BuildFile returned bytes that differ from the flat image")
        local_digest = hashlib.blake2b()
        for offset in range(0, size_bytes, READ_BYTES):
            local_digest.update(local_device.read_at(offset, READ_BYTES))
        if local_digest.hexdigest() != expected:
            raise SystemExit("BuildFile over LocalStorage returned bytes that differ from the flat image")
        del image

        fd = os.open(flat_path, os.O_RDONLY)
        buffer = bytearray(READ_BYTES)
        block = bytearray(BLOCK)
        offsets = range(0, size_bytes, READ_BYTES)
        randoms = (rng.integers(0, size_bytes // BLOCK, RANDOM_READS) * BLOCK).tolist()
        sequential = (size_bytes / (1 << 20), "MiB/s")
        random_reads = (RANDOM_READS / 1000, "kIOPS")
        rows: list[tuple[str, Callable[[], object], Callable[[], object], tuple[float, str]]] = [
            (
                "sequential 4 MiB readinto vs os.preadv",
                each(offsets, lambda o: device.readinto(buffer, o)),
                each(offsets, lambda o: os.preadv(fd, [buffer], o)),
                sequential,
            ),
            (
                "sequential 4 MiB read_at vs os.pread",
                each(offsets, lambda o: device.read_at(o, READ_BYTES)),
                each(offsets, lambda o: os.pread(fd, READ_BYTES, o)),
                sequential,
            ),
            (
                f"{RANDOM_READS} random 4 KiB readinto vs os.preadv",
                each(randoms, lambda o: device.readinto(block, o)),
                each(randoms, lambda o: os.preadv(fd, [block], o)),
                random_reads,
            ),
            (
                f"{RANDOM_READS} random 4 KiB read_at vs os.pread",
                each(randoms, lambda o: device.read_at(o, BLOCK)),
                each(randoms, lambda o: os.pread(fd, BLOCK, o)),
                random_reads,
            ),
            (
                "local: sequential 4 MiB readinto vs preadv",
                each(offsets, lambda o: local_device.readinto(buffer, o)),
                each(offsets, lambda o: os.preadv(fd, [buffer], o)),
                sequential,
            ),
            (
                f"local: {RANDOM_READS} random 4 KiB readinto",
                each(randoms, lambda o: local_device.readinto(block, o)),
                each(randoms, lambda o: os.preadv(fd, [block], o)),
                random_reads,
            ),
        ]
        print(f"{'scenario':44} {'ours':>12} {'baseline':>12} {'ratio':>7}")
        for name, ours, baseline, (amount, unit) in rows:
            ours_s, base_s = best_of_pair(3, ours, baseline)
            ours_rate, base_rate = amount / ours_s, amount / base_s
            print(f"{name:44} {ours_rate:8.0f} {unit} {base_rate:8.0f} {unit} {base_s / ours_s:6.2f}x")
        os.close(fd)


if __name__ == "__main__":
    main()

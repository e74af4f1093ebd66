"""The NBD server against the flat file it serves, with the same client tool on both sides.

Setup: a file of random bytes, served by ``NbdServerThread`` (unix socket) through a
file-backed disk (os.pread / os.pwrite). Both sides read from the page cache (the file is
read once before timing), so the figures compare protocol and server costs, not the drive.

1. sequential read: ``nbdcopy URL null:`` vs ``nbdcopy FILE null:`` and ``cat FILE``;
2. 4 KiB scattered reads, queue depth 16: ``qemu-img bench`` on the NBD URL vs on the file
   (a step of 7919 blocks modulo the size visits every block once per pass);
   A C server (``qemu-nbd``, when installed) on the same file gives a third row for scale;
3. server memory: RSS of this process (the server runs in a thread of it) before and after
   ``--requests`` 512-byte reads driven by ``qemu-img bench``.

    python bench/bench_nbd.py            # 512 MiB, 1,000,000 requests for the RSS check
    python bench/bench_nbd.py --quick    # 128 MiB, 200,000 requests
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ember.nbd import NbdServerThread

BLOCK = 4096
STEP_BLOCKS = 7919
DEPTH = 16


class FileDisk:
    """A raw file as a Disk; its reads never wait on a network, so it offers them inline."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR)
        self.size = os.fstat(self._fd).st_size
        self.block_size = BLOCK

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def read_if_cached(self, offset: int, length: int) -> bytes | None:
        return os.pread(self._fd, length, offset)

    def write_at(self, data: bytes, offset: int) -> None:
        os.pwrite(self._fd, data, offset)

    def write_zeroes_at(self, offset: int, length: int) -> None:
        os.pwrite(self._fd, bytes(length), offset)

    def flush(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def timed(argv: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, done.stdout


def best_of(runs: int, argv: list[str]) -> float:
    return min(timed(argv)[0] for _ in range(runs))


def qemu_bench_seconds(target: str, count: int, size_bytes: int, step_bytes: int) -> float:
    argv = ["qemu-img", "bench", "-f", "raw", "-d", str(DEPTH), "-c", str(count), "-s", str(size_bytes)]
    _, output = timed([*argv, "-S", str(step_bytes), target])
    match = re.search(r"Run completed in ([0-9.]+) seconds", output)
    if match is None:
        raise SystemExit(f"unexpected qemu-img bench output: {output}")
    return float(match.group(1))


@contextlib.contextmanager
def qemu_nbd(image: Path, sock: Path) -> Iterator[str | None]:
    """A read-only qemu-nbd on ``image``; yields its URL, or None when qemu-nbd is not installed."""
    if shutil.which("qemu-nbd") is None:
        yield None
        return
    argv = ["qemu-nbd", "-f", "raw", "-r", "-t", "-e", "8", "--cache=writeback", "-k", str(sock), str(image)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        yield f"nbd+unix:///?socket={sock}"
    finally:
        process.terminate()
        process.wait()


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="128 MiB and 200,000 requests")
    parser.add_argument("--requests", type=int, help="requests for the RSS check")
    args = parser.parse_args()
    for tool in ("nbdcopy", "qemu-img", "cat"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install libnbd-bin qemu-utils")
    size_bytes = (128 if args.quick else 512) << 20
    requests = args.requests or (200_000 if args.quick else 1_000_000)
    random_reads = 20_000 if args.quick else 50_000

    with tempfile.TemporaryDirectory(prefix="bench-nbd-") as tmp:
        image = Path(tmp) / "flat.img"
        image.write_bytes(np.random.default_rng(7).integers(0, 256, size_bytes, dtype=np.uint8).tobytes())
        disk = FileDisk(image)
        with NbdServerThread(disk, Path(tmp) / "nbd.sock") as server:
            url = server.url
            subprocess.run(["cat", str(image)], check=True, stdout=subprocess.DEVNULL)
            mib = size_bytes >> 20
            print(f"sequential read of {mib} MiB (best of 3)")
            ours = best_of(3, ["nbdcopy", url, "null:"])
            flat_nbdcopy = best_of(3, ["nbdcopy", str(image), "null:"])
            flat_cat = best_of(3, ["sh", "-c", f"cat {image} > /dev/null"])
            print(f"  nbdcopy via server   {ours:7.3f} s  {mib / ours:8.0f} MiB/s")
            print(f"  nbdcopy flat file    {flat_nbdcopy:7.3f} s  {mib / flat_nbdcopy:8.0f} MiB/s")
            print(f"  cat flat file        {flat_cat:7.3f} s  {mib / flat_cat:8.0f} MiB/s")
            print(f"  ratio server/flat nbdcopy {flat_nbdcopy / ours:.2f}x (target >= 0.8x)")
            with qemu_nbd(image, Path(tmp) / "qemu-nbd.sock") as c_url:
                if c_url:
                    c_seq = best_of(3, ["nbdcopy", c_url, "null:"])
                    print(f"  nbdcopy via qemu-nbd {c_seq:7.3f} s  {mib / c_seq:8.0f} MiB/s  (C server)")
                    c_random = min(
                        qemu_bench_seconds(c_url, random_reads, BLOCK, STEP_BLOCKS * BLOCK) for _ in range(3)
                    )

            step = STEP_BLOCKS * BLOCK
            print(f"4 KiB scattered reads, qemu-img bench -d {DEPTH} -c {random_reads} (best of 3)")
            ours = min(qemu_bench_seconds(url, random_reads, BLOCK, step) for _ in range(3))
            flat = min(qemu_bench_seconds(str(image), random_reads, BLOCK, step) for _ in range(3))
            print(f"  via server    {ours:7.3f} s  {random_reads / ours:9.0f} IOPS")
            print(f"  flat file     {flat:7.3f} s  {random_reads / flat:9.0f} IOPS")
            if c_url:
                print(f"  via qemu-nbd  {c_random:7.3f} s  {random_reads / c_random:9.0f} IOPS  (C server)")
            print(f"  ratio server/flat {flat / ours:.2f}x (target >= 0.5x)")

            warmup = min(requests // 10, 20_000)
            qemu_bench_seconds(url, warmup, 512, step)
            before = rss_kib()
            seconds = qemu_bench_seconds(url, requests, 512, step)
            after = rss_kib()
            rate = requests / seconds
            print(
                f"server RSS over {requests:,} requests ({rate:,.0f}/s, {threading.active_count()} threads)"
            )
            growth = (after - before) / 1024
            print(
                f"  before {before / 1024:7.1f} MiB  after {after / 1024:7.1f} MiB  growth {growth:+.1f} MiB"
            )
            print(f"  unhandled server errors: {len(server.unhandled_errors)}")
        disk.close()


if __name__ == "__main__":
    main()

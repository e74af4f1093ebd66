"""Resume to envd-ready: lazily served memory (with and without prefetch) vs a fully materialized RAM file.

Setup (~15 s): ``ember create-build`` of the default template (512 MiB guest) into a temp
storage, prefetch data recorded on it (``record_prefetch``: two resumes), its memfile
written out as one flat file. Then, interleaved so a busy machine slows all alike:

* warm, local storage: ``RunningSandbox`` without / with prefetch, vs the baseline: the
  same snapshot restored by QEMU from the flat file (``share=off``: a plain page-cache
  file, the fastest a file-backed restore gets), same slot / NBD rootfs / envd wait;
* cold from ``gs://`` (gcp-storage-emulator in a child process, so it does not compete
  for this process's GIL; the build copied there with ``copy_build``): a fresh chunk cache
  each run, without / with prefetch (target: >= 3x faster with prefetch);
* cold from a simulated bucket: the local objects behind ``FIRST_BYTE_S`` of latency per
  ranged read (a GCS-like time to first byte), which is where parallel fetches pay off;
  the emulator itself serves one request at a time and slows down under concurrent ones;
* this process's anonymous memory over repeated resumes (should stay flat);
* the memory of a real ``ember resume-build -iterations N`` process (one sandbox at a time,
  what each running sandbox costs): RSS, PSS and anonymous memory sampled while it resumes,
  next to the same interpreter having only imported ember's resume command.

Needs root, /dev/fuse, qemu-system-x86_64 and a provisioned kernel (HOST_KERNELS_DIR,
default /var/cache/ember/kernels).

    python bench/bench_resume.py            # 5 runs per variant, 20 resumes for RSS, 100 CLI resumes
    python bench/bench_resume.py --quick    # 3 runs, 8 resumes, 10 CLI resumes
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from ember.build import copy_build
from ember.environment import Environment
from ember.network import SlotPool
from ember.sandbox.resume import (
    LoadedBuild,
    RunningSandbox,
    init_envd,
    initramfs_for,
    kernel_for,
    load_build,
    record_prefetch,
    save_prefetch,
)
from ember.sandbox.rootfs import ServedRootfs
from ember.storage import ChunkCache, LocalStorage, Storage, open_storage
from ember.vmm.base import VmSnapshot
from ember.vmm.qemu import MemoryFileConfig, QemuVm, machine_for_restore

KERNELS = "/var/cache/ember/kernels"
FIRST_BYTE_S = 0.03
BUCKET = "ember-bench"
EMULATOR = (
    "import sys, time; from gcp_storage_emulator.server import create_server; "
    "s = create_server('127.0.0.1', int(sys.argv[1]), in_memory=True, default_bucket=sys.argv[2]); "
    "s.start(); print('up', flush=True); time.sleep(1e9)"
)


class DistantStorage(LocalStorage):
    """Local objects read as if from a bucket: every ranged read waits ``FIRST_BYTE_S`` first."""

    def read_range_into(self, key: str, offset: int, buffer: bytearray | memoryview) -> int:
        time.sleep(FIRST_BYTE_S)
        return super().read_range_into(key, offset, buffer)


def create(storage_dir: Path) -> uuid.UUID:
    build = uuid.uuid4()
    subprocess.run(
        [sys.executable, "-m", "ember", "create-build", "-to-build", str(build), "-storage", str(storage_dir),
         "-hugepages=false", "-memory", "512", "-disk", "512"],
        check=True, capture_output=True,
    )  # fmt: skip
    return build


def materialize(build: LoadedBuild, path: Path) -> None:
    """The build's memfile as one sparse flat file (zero blocks left as holes)."""
    step = 4 << 20
    with path.open("wb") as out:
        out.truncate(build.memfile.size)
        for offset in range(0, build.memfile.size, step):
            data = build.memfile.read_at(offset, step)
            if data.count(0) != len(data):
                out.seek(offset)
                out.write(data)


def lazy(build: LoadedBuild, env: Environment, work: Path, pool: SlotPool, *, prefetch: bool) -> float:
    with RunningSandbox(build, env, work, pool, prefetch=prefetch) as sandbox:
        return sandbox.resumed_in_s


def baseline(build: LoadedBuild, env: Environment, work: Path, pool: SlotPool, ram: Path) -> float:
    """The same resume from a flat RAM file: slot in parallel, NBD rootfs, QEMU restore, envd /init."""
    started = time.monotonic()
    work.mkdir(parents=True)
    with contextlib.ExitStack() as stack, concurrent.futures.ThreadPoolExecutor(1) as slots:
        acquiring = slots.submit(pool.acquire)
        rootfs = stack.enter_context(ServedRootfs(build.rootfs, work, "rootfs", build.rootfs.block_size))
        kernel = kernel_for(env, build.metadata.template.kernel_version)
        slot = acquiring.result()
        stack.callback(pool.release, slot)
        config = machine_for_restore(
            build.machine,
            kernel_path=kernel.vmlinuz_path,
            initrd_path=initramfs_for(kernel),
            drive_sources={"rootfs": rootfs.url},
            memory_file=MemoryFileConfig(ram, shared=False),
            taps=(slot.tap,),
            netns=slot.namespace,
            name="bench-baseline",
        )
        vm = QemuVm.restore(config, VmSnapshot(build.snapfile, ram, ram.stat().st_size), work / "vm")
        stack.callback(vm.stop)
        init_envd(vm, str(slot.host_ip))
        return time.monotonic() - started


def summary(label: str, seconds: list[float], reference: list[float] | None = None) -> str:
    ordered = sorted(ms * 1000 for ms in seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    line = f"  {label:<44} p50 {statistics.median(ordered):7.1f} ms   p95 {p95:7.1f} ms"
    if reference:
        line += f"   {statistics.median(reference) / statistics.median(seconds):5.2f}x"
    return line


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def emulator() -> Iterator[str]:
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", EMULATOR, str(port), BUCKET], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"up"
        yield f"http://127.0.0.1:{port}"
    finally:
        child.kill()
        child.wait()


def memory_kib(pid: int) -> dict[str, int]:
    """``Rss``, ``Pss`` and anonymous KiB of a live process.

    Anonymous memory is what the process itself allocated. Pages of the build's data files
    that layered reads copy from (read-only maps) count in RSS, and as "private" while no
    other process maps them, yet they are the page cache's, shared and reclaimable.
    """
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return {"rss": fields["Rss"], "pss": fields["Pss"], "anon": fields["Anonymous"]}


def cli_memory(storage_dir: Path, build_id: uuid.UUID, iterations: int) -> str:
    """Memory of ``ember resume-build -iterations N`` sampled every 0.2 s, vs its imports alone."""
    imports_only = subprocess.Popen(
        [sys.executable, "-c", "import sys, ember.cli.resume_build; sys.stdin.read()"],
        stdin=subprocess.PIPE,
    )
    time.sleep(3)
    idle = memory_kib(imports_only.pid)
    imports_only.communicate(b"")
    command = [sys.executable, "-m", "ember", "resume-build", "-from-build", str(build_id),
               "-storage", str(storage_dir), "-iterations", str(iterations)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    stdout = process.stdout
    first_done = threading.Event()

    def read_output() -> str:
        lines = []
        for line in stdout:
            lines.append(line)
            if line.startswith("[ 1]"):
                first_done.set()
        return "".join(lines)

    samples: list[dict[str, int]] = []
    after_first: dict[str, int] | None = None
    with concurrent.futures.ThreadPoolExecutor(1) as reader:
        output = reader.submit(read_output)
        while process.poll() is None:
            with contextlib.suppress(OSError, KeyError):
                samples.append(memory_kib(process.pid))
                if after_first is None and first_done.is_set():
                    after_first = samples[-1]
            time.sleep(0.2)
        text = output.result()
    if process.returncode != 0 or after_first is None:
        raise SystemExit(f"resume-build failed (exit {process.returncode}):\n{text}")
    peak = {key: max(sample[key] for sample in samples) for key in ("rss", "pss", "anon")}

    def mib(sample: dict[str, int]) -> str:
        rss, pss, anon = (sample[key] / 1024 for key in ("rss", "pss", "anon"))
        return f"RSS {rss:5.1f}  PSS {pss:5.1f}  anonymous {anon:5.1f}"

    return (
        f"ember resume-build -iterations {iterations}, MiB:\n"
        f"  imports only (baseline)   {mib(idle)}\n"
        f"  after the first resume    {mib(after_first)}\n"
        f"  at the last sample        {mib(samples[-1])}\n"
        f"  peak                      {mib(peak)}"
    )


def interleave(runs: int, variants: dict[str, Callable[[int], float]]) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in variants}
    for run in range(runs):
        for name, variant in variants.items():
            results[name].append(variant(run))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs per variant, 8 resumes for RSS")
    args = parser.parse_args()
    runs, rss_runs, cli_runs = (3, 8, 10) if args.quick else (5, 20, 100)
    os.environ.setdefault("HOST_KERNELS_DIR", KERNELS)
    with tempfile.TemporaryDirectory(prefix="bench-resume-", dir="/var/tmp") as scratch, SlotPool() as pool:
        root = Path(scratch)
        began = time.monotonic()
        build_id = create(root / "store")
        local: Storage = open_storage(str(root / "store"))
        env = Environment.resolve(str(root / "store"))
        mapping = record_prefetch(local, build_id, env, root / "record", pool, progress=lambda line: None)
        save_prefetch(local, build_id, mapping)
        build = load_build(local, build_id, root)
        materialize(build, root / "ram")
        print(
            f"setup {time.monotonic() - began:.1f} s: 512 MiB guest, {len(mapping.indices)} pages to prefetch"
        )

        work = iter(root / f"run-{n}" for n in range(10_000))
        warm = interleave(runs, {
            "lazy": lambda _: lazy(build, env, next(work), pool, prefetch=False),
            "lazy+prefetch": lambda _: lazy(build, env, next(work), pool, prefetch=True),
            "flat": lambda _: baseline(build, env, next(work), pool, root / "ram"),
        })  # fmt: skip
        print("warm, local storage: resume to envd-ready (baseline: QEMU restore from a flat RAM file)")
        print(summary("flat RAM file, share=off (baseline)", warm["flat"]))
        print(summary("lazy FUSE memory, no prefetch", warm["lazy"], warm["flat"]))
        print(summary("lazy FUSE memory, prefetch", warm["lazy+prefetch"], warm["flat"]))

        with emulator() as endpoint:
            os.environ["STORAGE_EMULATOR_HOST"] = endpoint
            remote = open_storage(f"gs://{BUCKET}")
            copy_build(build_id, local, remote)

            def cold(source: Storage, prefetch: bool) -> float:
                cache_dir = root / "snapshot-cache"
                shutil.rmtree(cache_dir, ignore_errors=True)
                cache_dir.mkdir()
                cache = ChunkCache(source, cache_dir)
                loaded = load_build(cache, build_id, root)
                try:
                    return lazy(loaded, env, next(work), pool, prefetch=prefetch)
                finally:
                    cache.close()

            distant = DistantStorage(root / "store" / "templates")
            cold_runs = interleave(runs, {
                "gs": lambda _: cold(remote, False),
                "gs+prefetch": lambda _: cold(remote, True),
                "distant": lambda _: cold(distant, False),
                "distant+prefetch": lambda _: cold(distant, True),
            })  # fmt: skip
        print("cold, empty chunk cache each run: resume to envd-ready")
        print(summary("gs:// emulator, no prefetch (baseline)", cold_runs["gs"]))
        print(summary("gs:// emulator, prefetch (16 workers)", cold_runs["gs+prefetch"], cold_runs["gs"]))
        print(
            summary(
                f"bucket +{FIRST_BYTE_S * 1000:.0f} ms/read, no prefetch (baseline)", cold_runs["distant"]
            )
        )
        print(summary("same, prefetch (16 workers)", cold_runs["distant+prefetch"], cold_runs["distant"]))

        anon = [memory_kib(os.getpid())["anon"] / 1024]
        for _ in range(rss_runs):
            lazy(build, env, next(work), pool, prefetch=True)
            anon.append(memory_kib(os.getpid())["anon"] / 1024)
        print(
            f"this process's anonymous memory over {rss_runs} resumes: "
            f"{anon[0]:.1f} -> {anon[1]:.1f} (1) -> {anon[-1]:.1f} MiB"
        )
        print(cli_memory(root / "store", build_id, cli_runs))
        print(f"total {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    main()

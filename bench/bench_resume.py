"""Resume to envd-ready: lazily served memory (with and without prefetch) vs a fully materialized RAM file.

Setup (~25 s): ``ember create-build`` of the default template (512 MiB guest) into a temp
storage, prefetch data recorded on it (as ``resume-build -optimize`` does: two resumes without
prefetch, ``Sandbox.accesses`` of each, ``merge_runs``, ``save_prefetch``), its memfile written
out as one flat file. Then, interleaved so a busy machine slows all alike:

* warm, local storage: ``Sandbox.resume`` through a ``Node`` in this process, configured as the
  daemon's (2 sandbox processes and 2 network slots made ahead), without / with prefetch, and
  once more with the ``Node`` defaults ``resume-build`` uses (no slot made ahead); the figure is
  the caller's wall time of ``Sandbox.resume``, the sandbox process's own prepare / restore /
  envd split beside it. Baseline: the same snapshot restored by QEMU from the flat file
  (``share=off``: a plain page-cache file, the fastest a file-backed restore gets), started from
  this process, with a slot of the same node, an NBD rootfs served the same way and the same
  envd /init with a token vouched for through fw_cfg. Beside it, how long a start waits for its
  network slot with each node (``Node.take_slot``, which runs before the sandbox process starts
  preparing);
* cold from ``gs://`` (gcp-storage-emulator in a child process): the node's chunk cache
  emptied before each run (the page cache is left warm), without / with prefetch (target:
  >= 3x faster with prefetch);
* cold from a simulated bucket: the local objects behind ``FIRST_BYTE_S`` of latency per
  ranged read (``distant_storage``, loaded into the sandbox processes through the fork
  server), which is where parallel fetches pay off; the emulator itself serves one request
  at a time and slows down under concurrent ones;
* memory. Since the guest's servers run in a sandbox process of their own, "this process's
  anonymous memory" no longer says what a sandbox costs. Measured instead: the running
  sandbox process of each of N resumes (``Pss_Anon + Pss_Shmem``, and ``Anonymous``, ``Pss``,
  ``Rss``, from smaps_rollup), next to an idle sandbox process of the pool (the same process
  before it resumed anything: the baseline); and this process's anonymous memory over those
  resumes, which should stay flat (the owner keeps nothing per sandbox);
* the process tree of a real ``ember resume-build -iterations N`` (one sandbox at a time),
  sampled while it resumes: the command itself (next to the same interpreter having only
  imported the command), its running sandbox process, an idle one, the slot keeper and the
  fork server.

Needs root, /dev/fuse, qemu-system-x86_64 and a provisioned kernel (HOST_KERNELS_DIR,
default /var/cache/ember/kernels).

    python bench/bench_resume.py            # 5 runs per variant, 20 resumes for memory, 100 CLI resumes
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
from dataclasses import dataclass
from pathlib import Path

from distant_storage import FIRST_BYTE_S, distant_url, preload_in_sandbox_processes
from ember.build import BuildFile, MemoryPrefetch, copy_build
from ember.envd.client import EnvdClient
from ember.environment import Environment
from ember.guest import ENVD_PORT, build_initramfs
from ember.memory import merge_runs
from ember.sandbox import (
    BuildInfo,
    Node,
    ResumeOptions,
    Sandbox,
    StartReport,
    new_access_token,
    save_prefetch,
)
from ember.sandbox.guest import TOKEN_FW_CFG, kernel_for, serve_rootfs, token_hash
from ember.storage import MEMFILE, ROOTFS, open_storage
from ember.vmm.base import VmSnapshot
from ember.vmm.qemu import MemoryFileConfig, QemuVm, machine_for_restore
from proctree import Tree, Usage, mib, sandbox_process, usage_of

KERNELS = "/var/cache/ember/kernels"
BUCKET = "ember-bench"
SETTLE_S = 0.3
"""After a sandbox ends, before the next start: its teardown's last processes exit."""
RECORD_SETTLE_S = 1.0
EMULATOR = (
    "import sys, time; from gcp_storage_emulator.server import create_server; "
    "s = create_server('127.0.0.1', int(sys.argv[1]), in_memory=True, default_bucket=sys.argv[2]); "
    "s.start(); print('up', flush=True); time.sleep(1e9)"
)


def create(storage_dir: Path, *extra: str) -> uuid.UUID:
    """``ember create-build`` of the default template, 512 MiB guest, hugepages off."""
    build = uuid.uuid4()
    done = subprocess.run(
        [sys.executable, "-m", "ember", "create-build", "-to-build", str(build), "-storage", str(storage_dir),
         "-hugepages=false", "-memory", "512", "-disk", "512", *extra],
        capture_output=True, text=True, env=environment(storage_dir.parent / "create-base"), check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"create-build failed (exit {done.returncode}):\n{done.stderr}{done.stdout}")
    return build


def environment(base: Path, **extra: str) -> dict[str, str]:
    """This process's environment with the kernel cache and an ORCHESTRATOR_BASE_PATH of its own."""
    return {
        **os.environ,
        "HOST_KERNELS_DIR": os.environ.get("HOST_KERNELS_DIR", KERNELS),
        "ORCHESTRATOR_BASE_PATH": str(base),
        **extra,
    }


def node_env(storage: str, root: Path, name: str) -> Environment:
    """A node's environment: base path and chunk cache under ``root``, named ``name``."""
    return Environment.resolve(
        storage, environment(root / f"{name}-base", SNAPSHOT_CACHE_DIR=str(root / f"{name}-cache"))
    )


def daemon_like_node(storage: str, env: Environment) -> Node:
    """A node with the daemon's pools: sandbox processes and network slots made ahead."""
    from ember.orchestrator.daemon import DaemonConfig  # here: grpc and aiohttp stay out of this module

    return Node(storage, env=env, idle_workers=DaemonConfig.idle_workers, warm_slots=DaemonConfig.warm_slots)


def record_prefetch(storage_dir: Path, build_id: uuid.UUID, root: Path) -> MemoryPrefetch:
    """``resume-build -optimize``'s recording: two resumes without prefetch, pages both read.

    A node of its own: a node keeps a build's metadata once read, so the nodes that measure
    must first see the build after its prefetch data is saved.
    """
    with Node(str(storage_dir), env=node_env(str(storage_dir), root, "record")) as node:
        recorded = []
        for _ in range(2):
            with Sandbox.resume(node, ResumeOptions(build_id, prefetch=False)) as sandbox:
                time.sleep(RECORD_SETTLE_S)
                recorded.append(sandbox.accesses())
        mapping = merge_runs(recorded)
        save_prefetch(node.storage, build_id, mapping)
    return mapping


def materialize(node: Node, build_id: uuid.UUID, path: Path) -> None:
    """The build's memfile as one sparse flat file (zero blocks left as holes)."""
    memfile = BuildFile.open(node.storage, build_id, MEMFILE)
    step = 4 << 20
    with path.open("wb") as out:
        out.truncate(memfile.size)
        for offset in range(0, memfile.size, step):
            data = memfile.read_at(offset, step)
            if data.count(0) != len(data):
                out.seek(offset)
                out.write(data)


@dataclass(frozen=True)
class Resumed:
    wall_s: float
    report: StartReport | None = None
    """The sandbox process's own split (None for the baseline)."""
    process: Usage | None = None
    """The running sandbox process's memory, when asked for."""


def lazy(node: Node, build_id: uuid.UUID, *, prefetch: bool, measure: bool = False) -> Resumed:
    """``Sandbox.resume`` to envd-ready, then kill; the caller's wall time."""
    node.workers.wait_ready()
    started = time.monotonic()
    sandbox = Sandbox.resume(node, ResumeOptions(build_id, prefetch=prefetch))
    wall = time.monotonic() - started
    try:
        usage = None
        if measure:
            found = sandbox_process(sandbox.id)
            usage = usage_of(found[0]) if found is not None else None
        return Resumed(wall, sandbox.started, usage)
    finally:
        sandbox.kill()
        time.sleep(SETTLE_S)


def flat(node: Node, build: BuildInfo, ram: Path, root: Path) -> Resumed:
    """The same resume from a flat RAM file: slot, NBD rootfs, QEMU restore, envd /init."""
    assert build.machine is not None
    node.workers.wait_ready()
    started = time.monotonic()
    token = new_access_token()
    with contextlib.ExitStack() as stack:
        slot = node.take_slot()
        stack.callback(node.release_slot, slot)
        work = Path(tempfile.mkdtemp(prefix="flat-", dir=root))
        stack.callback(shutil.rmtree, work, True)
        sockets = Path(tempfile.mkdtemp(prefix="ember-bench-"))
        stack.callback(shutil.rmtree, sockets, True)
        rootfs_file = BuildFile.open(node.storage, build.build_id, ROOTFS)
        rootfs = stack.enter_context(serve_rootfs(node.storage, rootfs_file, work, sockets))
        kernel = kernel_for(node.env, build.metadata.template.kernel_version)
        config = machine_for_restore(
            build.machine,
            kernel_path=kernel.vmlinuz_path,
            initrd_path=build_initramfs(kernel),
            drive_sources={"rootfs": rootfs.url},
            memory_file=MemoryFileConfig(ram, shared=False),
            taps=(slot.tap,),
            netns=slot.namespace,
            name="bench-flat",
            fw_cfg={TOKEN_FW_CFG: token_hash(token)},
        )
        snapshot = VmSnapshot(build.snapfile, ram, build.machine.memory_mib << 20)
        vm = QemuVm.restore(config, snapshot, work / "vm", socket_dir=sockets)
        stack.callback(vm.stop)
        EnvdClient(f"http://{slot.host_ip}:{ENVD_PORT}").init_when_ready(
            10.0, vm.check_alive, access_token=token
        )
        wall = time.monotonic() - started
    time.sleep(SETTLE_S)
    return Resumed(wall)


def summary(label: str, runs: list[Resumed], reference: list[Resumed] | None = None) -> str:
    seconds = [run.wall_s for run in runs]
    ordered = sorted(ms * 1000 for ms in seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    line = f"  {label:<48} p50 {statistics.median(ordered):7.1f} ms   p95 {p95:7.1f} ms"
    if reference:
        base = statistics.median(run.wall_s for run in reference)
        line += f"   {base / statistics.median(seconds):5.2f}x"
    reports = [run.report for run in runs if run.report is not None]
    if reports:
        parts = (
            statistics.median(r.prepare_s for r in reports) * 1000,
            statistics.median(r.restore_s for r in reports) * 1000,
            statistics.median(r.init_s for r in reports) * 1000,
        )
        line += "   (in the sandbox process: prepare {:.0f} + restore {:.0f} + envd {:.0f} ms)".format(*parts)
    return line


def slot_times(plain: Node, warm: Node, runs: int) -> str:
    """How long a start waits for its network slot: made on demand, or one of those made ahead."""
    taken: dict[str, list[float]] = {"plain": [], "warm": []}
    for _ in range(runs):
        for name, node in (("plain", plain), ("warm", warm)):
            time.sleep(SETTLE_S)
            started = time.monotonic()
            slot = node.take_slot()
            taken[name].append(time.monotonic() - started)
            node.release_slot(slot)
    return (
        f"  network slot for a start: made ahead (daemon's node) p50 {p50_ms(taken['warm']):6.1f} ms, "
        f"made on demand (resume-build's node) p50 {p50_ms(taken['plain']):6.1f} ms, before the sandbox "
        "process starts preparing"
    )


def p50_ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


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


def interleave(runs: int, variants: dict[str, Callable[[], Resumed]]) -> dict[str, list[Resumed]]:
    results: dict[str, list[Resumed]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, variant in variants.items():
            results[name].append(variant())
    return results


def empty_cache(node: Node) -> None:
    """Remove the node's chunk files (each resume runs in a fresh sandbox process, which has none open)."""
    cache = node.env.snapshot_cache_dir
    for entry in cache.iterdir() if cache.is_dir() else ():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def describe(usage: Usage) -> str:
    return (
        f"own (Pss_Anon+Pss_Shmem) {mib(usage.own_kib):5.1f}  Anonymous {mib(usage.anonymous):5.1f}  "
        f"PSS {mib(usage.pss):5.1f}  RSS {mib(usage.rss):5.1f}  threads {usage.threads}"
    )


def peak(samples: list[Usage]) -> Usage:
    return Usage(
        rss=max(s.rss for s in samples),
        pss=max(s.pss for s in samples),
        pss_anon=max(s.pss_anon for s in samples),
        pss_shmem=max(s.pss_shmem for s in samples),
        anonymous=max(s.anonymous for s in samples),
        threads=max(s.threads for s in samples),
        fds=max(s.fds for s in samples),
        processes=1,
    )


def in_process_memory(node: Node, build_id: uuid.UUID, resumes: int) -> str:
    """The running sandbox process of each resume, an idle one of the pool, and this process."""
    node.workers.wait_ready()
    time.sleep(1.0)
    me = os.getpid()
    owner = [usage_of(me)]
    running: list[Usage] = []
    for _ in range(resumes):
        resumed = lazy(node, build_id, prefetch=True, measure=True)
        if resumed.process is not None:
            running.append(resumed.process)
        owner.append(usage_of(me))
    idle = [usage_of(pid) for pid in Tree.of(me).idle_sandboxes()]
    lines = [f"sandbox processes over {resumes} resumes (prefetch), MiB:"]
    fresh = [usage for usage in idle if usage is not None and usage.threads]
    if fresh:
        lines.append(f"  idle pool process (baseline)   {describe(min(fresh, key=lambda u: u.own_kib))}")
    if running:
        ordered = sorted(running, key=lambda u: u.own_kib)
        lines.append(f"  running, least                 {describe(ordered[0])}")
        lines.append(f"  running, median                {describe(ordered[len(ordered) // 2])}")
        lines.append(f"  running, peak                  {describe(peak(running))}")
        lines.append(f"  ({len(running)} of {resumes} running sandbox processes measured)")
    anon = [mib(u.anonymous) for u in owner if u is not None]
    lines.append(
        f"this process's anonymous memory over those resumes: {anon[0]:.1f} -> {anon[1]:.1f} (1) "
        f"-> {anon[-1]:.1f} MiB"
    )
    return "\n".join(lines)


def cli_memory(storage_dir: Path, build_id: uuid.UUID, iterations: int, root: Path) -> str:
    """The process tree of ``ember resume-build -iterations N``, sampled every 0.2 s."""
    imports_only = subprocess.Popen(
        [sys.executable, "-c", "import sys, ember.cli.resume_build; sys.stdin.read()"],
        stdin=subprocess.PIPE,
    )
    time.sleep(3)
    idle_owner = usage_of(imports_only.pid)
    imports_only.communicate(b"")
    command = [sys.executable, "-m", "ember", "resume-build", "-from-build", str(build_id),
               "-storage", str(storage_dir), "-iterations", str(iterations)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment(root / "cli-base"))
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

    samples: dict[str, list[Usage]] = {"owner": [], "running": [], "idle": [], "keeper": [], "forkserver": []}
    after_first: Usage | None = None
    with concurrent.futures.ThreadPoolExecutor(1) as reader:
        output = reader.submit(read_output)
        while process.poll() is None:
            tree = Tree.of(process.pid)
            for name, pids in (
                ("owner", [process.pid]),
                ("running", tree.running_sandboxes()),
                ("idle", tree.idle_sandboxes()),
                ("keeper", tree.roles["keeper"]),
                ("forkserver", tree.roles["forkserver"]),
            ):
                for pid in pids:
                    usage = usage_of(pid, with_fds=False)
                    if usage is not None and usage.threads:
                        samples[name].append(usage)
            if after_first is None and first_done.is_set() and samples["owner"]:
                after_first = samples["owner"][-1]
            time.sleep(0.2)
        text = output.result()
    if process.returncode != 0 or after_first is None or idle_owner is None:
        raise SystemExit(f"resume-build failed (exit {process.returncode}):\n{text}")
    owner = samples["owner"]
    lines = [
        f"ember resume-build -iterations {iterations}, MiB:",
        f"  command, imports only (baseline)     {describe(idle_owner)}",
        f"  command, after the first resume      {describe(after_first)}",
        f"  command, at the last sample          {describe(owner[-1])}",
        f"  command, peak                        {describe(peak(owner))}",
    ]
    for name, label in (
        ("idle", "idle sandbox process (baseline)"),
        ("running", "running sandbox process, median"),
        ("keeper", "slot keeper, median"),
        ("forkserver", "fork server, median"),
    ):
        if samples[name]:
            ordered = sorted(samples[name], key=lambda u: u.own_kib)
            lines.append(f"  {label:<36} {describe(ordered[len(ordered) // 2])}")
    if samples["running"]:
        lines.append(f"  {'running sandbox process, peak':<36} {describe(peak(samples['running']))}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs per variant, 8 resumes for memory")
    args = parser.parse_args()
    runs, memory_runs, cli_runs = (3, 8, 10) if args.quick else (5, 20, 100)
    os.environ.setdefault("HOST_KERNELS_DIR", KERNELS)
    with (
        tempfile.TemporaryDirectory(prefix="bench-resume-", dir="/var/tmp") as scratch,
        emulator() as endpoint,
    ):
        # Sandbox processes inherit the fork server's environment and modules: both are set
        # before the first node starts it.
        os.environ["STORAGE_EMULATOR_HOST"] = endpoint
        preload_in_sandbox_processes()
        root = Path(scratch)
        store = root / "store"
        began = time.monotonic()
        build_id = create(store)
        mapping = record_prefetch(store, build_id, root)
        remote_url = f"gs://{BUCKET}"
        copy_build(build_id, open_storage(str(store)), open_storage(remote_url))
        with contextlib.ExitStack() as nodes:
            warm = nodes.enter_context(daemon_like_node(str(store), node_env(str(store), root, "warm")))
            plain = nodes.enter_context(Node(str(store), env=node_env(str(store), root, "plain")))
            build = warm.build_info(build_id)
            materialize(warm, build_id, root / "ram")
            print(
                f"setup {time.monotonic() - began:.1f} s: 512 MiB guest, {len(mapping.indices)} pages to "
                "prefetch; measured under whatever else runs on this machine"
            )
            warm_runs = interleave(runs, {
                "lazy": lambda: lazy(warm, build_id, prefetch=False),
                "lazy+prefetch": lambda: lazy(warm, build_id, prefetch=True),
                "plain": lambda: lazy(plain, build_id, prefetch=True),
                "flat": lambda: flat(warm, build, root / "ram", root),
            })  # fmt: skip
            print("warm, local storage: resume to envd-ready (baseline: QEMU restore from a flat RAM file)")
            print(summary("flat RAM file, share=off (baseline)", warm_runs["flat"]))
            print(summary("lazy FUSE memory, no prefetch", warm_runs["lazy"], warm_runs["flat"]))
            print(summary("lazy FUSE memory, prefetch", warm_runs["lazy+prefetch"], warm_runs["flat"]))
            print(
                summary(
                    "same, resume-build's node (no slot made ahead)", warm_runs["plain"], warm_runs["flat"]
                )
            )

            print(slot_times(plain, warm, runs * 2))

            gs = nodes.enter_context(daemon_like_node(remote_url, node_env(remote_url, root, "gs")))
            far_url = distant_url(store / "templates")
            far = nodes.enter_context(daemon_like_node(far_url, node_env(far_url, root, "far")))

            def cold(node: Node, prefetch: bool) -> Resumed:
                node.workers.wait_ready()
                empty_cache(node)
                return lazy(node, build_id, prefetch=prefetch)

            cold_runs = interleave(runs, {
                "gs": lambda: cold(gs, False),
                "gs+prefetch": lambda: cold(gs, True),
                "distant": lambda: cold(far, False),
                "distant+prefetch": lambda: cold(far, True),
            })  # fmt: skip
            print("cold, empty chunk cache each run: resume to envd-ready")
            print(summary("gs:// emulator, no prefetch (baseline)", cold_runs["gs"]))
            print(summary("gs:// emulator, prefetch", cold_runs["gs+prefetch"], cold_runs["gs"]))
            print(
                summary(
                    f"bucket +{FIRST_BYTE_S * 1000:.0f} ms/read, no prefetch (baseline)", cold_runs["distant"]
                )
            )
            print(summary("same, prefetch", cold_runs["distant+prefetch"], cold_runs["distant"]))
        # One node alone, so its slot keeper is the fork server's oldest child (``proctree``).
        with daemon_like_node(str(store), node_env(str(store), root, "memory")) as node:
            print(in_process_memory(node, build_id, memory_runs))
        print(cli_memory(store, build_id, cli_runs, root))
        print(f"total {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    main()

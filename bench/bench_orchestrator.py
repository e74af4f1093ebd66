"""The node daemon's targets: ``ember orchestrator`` driven over gRPC, each figure beside a baseline
measured in the same run.

Setup (~30 s): ``ember create-build`` of the default template (512 MiB guest, hugepages off)
into a temp storage; ``ember orchestrator`` started as a subprocess on loopback ports with an
ORCHESTRATOR_BASE_PATH of its own, driven with the stubs in ``ember.rpc`` (as
tests/vm/test_orchestrator.py does). Then:

1. **Create vs the library.** gRPC ``Create`` (a resume of the build) against ``Sandbox.resume``
   of the same build through a ``Node`` in this process with the daemon's pools (2 sandbox
   processes, 2 network slots made ahead), interleaved: p50 of each and the ratio (target
   <= 1.1x). The daemon's own start time (its ``ember_sandbox_start_seconds`` histogram) is
   shown beside, so the wire's share is visible.
2. **Concurrent Creates.** 1, 2, 4 and 8 Creates at once, from a client that retries
   RESOURCE_EXHAUSTED every ``RETRY_S`` as E2B's placement does (the node starts at most 3 at
   once): p50 and p95 from the first attempt to RUNNING, throughput (sandboxes/s over the
   batches' wall time), retries, failures. Target: throughput at 4 >= 1.5x at 1.
3. **Memory per sandbox.** With 0 and with 20 sandboxes of one build running: the sum of
   ``Pss_Anon + Pss_Shmem`` over every ember process of the daemon's tree (daemon, fork server,
   slot keeper, sandbox processes; not QEMU, not page cache; see ``proctree``), the difference
   divided by 20 (target <= 15 MiB); threads of those processes likewise (target <= 4 per
   sandbox); QEMU's own RSS per sandbox for context.
4. **Leaks.** 200 Create/Delete cycles: file descriptors and threads of the daemon's tree, the
   network slots it owns (``/run/ember/slots`` owner records naming its processes) and their
   ``ns-*`` namespaces, mounts under its base path, its workspaces, and its tree's memory,
   before and after.
5. **Pause.** gRPC ``Pause`` vs ``ember resume-build -cmd-pause`` of the same dirty set (the
   guest writes ``DIRTY_MIB`` of random bytes into a tmpfs: through the node proxy and envd for
   the gRPC sandbox, as the ``-cmd-pause`` command for the CLI's): the Pause call's time against
   the CLI's printed "paused in X ms" (target <= 1.1x), the daemon's own pause time
   (``ember_sandbox_pause_seconds``, the same measure as the CLI's) beside.
6. **Page serving of many sandboxes at once (the GIL question).**
   a. In guests: a build whose guest holds ``HOLD_MIB`` of random bytes in a tmpfs (paused
      from the first build), resumed 1 and 4 times; every guest then reads its file (``cat``)
      at once, which faults memory the sandbox process serves lazily. Aggregate MiB/s of the
      first read, next to a second read of the same file (memory now loaded: the guest's and
      TCG's own cost, the baseline), and the MiB the daemon reports served
      (``ember_memory_read_bytes_total``).
   b. The memory file alone: N ``LazyMemory`` mounts of one memfile build served by N processes
      (one each, as sandbox processes do) vs by one process (the old design: one GIL), one reader
      process per mount touching every 4 KiB page (random order, ``MADV_RANDOM``: one FUSE read
      per page); aggregate MiB/s for N = 1 and 4.

Every figure is taken under whatever else runs on the machine: compare a figure with its
baseline from the same run, not with another run's.

Needs root, /dev/fuse, qemu-system-x86_64 and a provisioned kernel (HOST_KERNELS_DIR,
default /var/cache/ember/kernels).

    python bench/bench_orchestrator.py            # 10 resumes, 1/2/4/8 concurrent, 20 sandboxes, 200 cycles
    python bench/bench_orchestrator.py --quick    # 3 resumes, 1/2/4, 5 sandboxes, 20 cycles
    python bench/bench_orchestrator.py --only 3,6b    # some sections (1, 2, 3, 4, 5, 6a, 6b)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench_pages import store_memfile
from bench_pause import DIRTY
from bench_resume import KERNELS, create, daemon_like_node, environment, free_port, node_env
from ember.envd.client import EnvdClient
from ember.header import PAGE_SIZE
from ember.rpc import orchestrator_pb2 as pb
from ember.rpc import orchestrator_pb2_grpc
from ember.sandbox import Node, ResumeOptions, Sandbox
from ember.storage import LocalStorage
from proctree import Tree, Usage, mib, total

START_TIMEOUT_S = 180.0
RETRY_S = 0.1
"""How long the client waits after RESOURCE_EXHAUSTED before it asks again."""
SETTLE_S = 1.0
"""After a sandbox ends, before the next start: teardown done, the pools refilled."""
MEASURE_SETTLE_S = 4.0
"""Before a memory or leak snapshot: pools refilled, helper processes gone."""
DIRTY_MIB = 64
HOLD = (
    "mkdir -p /mnt/hold && mount -t tmpfs -o size={size}M tmpfs /mnt/hold && "
    "dd if=/dev/urandom of=/mnt/hold/fill bs=1M count={mib} 2>/dev/null && sync"
)
READ_HOLD = "cat /mnt/hold/fill > /dev/null"
SLOT_OWNERS = Path("/run/ember/slots")
NETNS_DIR = Path("/run/netns")
PAUSED_IN = re.compile(r"paused in (\d+)ms")


# -- the daemon ------------------------------------------------------------------------------


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    channel: grpc.Channel
    stub: orchestrator_pb2_grpc.SandboxServiceStub
    grpc_port: int
    proxy_port: int
    base: Path
    log: Path

    def envd(self, sandbox_id: str, token: str) -> EnvdClient:
        """envd of ``sandbox_id`` through the daemon's node proxy (header routing)."""
        return EnvdClient(
            f"http://127.0.0.1:{self.proxy_port}",
            access_token=token,
            headers={"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": "49983"},
        )

    def create_once(self, sandbox_id: str, build: str, *, snapshot: bool = False) -> None:
        config = pb.SandboxConfig(
            sandbox_id=sandbox_id, build_id=build, snapshot=snapshot, envd_access_token=token_of(sandbox_id)
        )
        self.stub.Create(pb.SandboxCreateRequest(sandbox=config), timeout=START_TIMEOUT_S)

    def delete(self, sandbox_id: str) -> None:
        self.stub.Delete(pb.SandboxDeleteRequest(sandbox_id=sandbox_id), timeout=START_TIMEOUT_S)

    def listed(self) -> list[str]:
        return sorted(entry.sandbox_id for entry in self.stub.List(empty_pb2.Empty()).sandboxes)

    def metrics(self) -> dict[str, float]:
        """The daemon's /metrics, ``name{labels}`` -> value."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.proxy_port}/metrics", timeout=30) as answer:
            text = answer.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def tree(self) -> Tree:
        return Tree.of(self.process.pid)


def token_of(sandbox_id: str) -> str:
    return f"token-{sandbox_id}"


def start_daemon(storage: Path, root: Path) -> Daemon:
    grpc_port, proxy_port = free_port(), free_port()
    base, log = root / "daemon-base", root / "daemon.log"
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "ember", "orchestrator", "-storage", str(storage), "-listen", "127.0.0.1",
             "-grpc-port", str(grpc_port), "-proxy-port", str(proxy_port), "-node-id", "bench"],
            stdout=handle, stderr=handle,
            env=environment(base, SNAPSHOT_CACHE_DIR=str(root / "daemon-cache")),
        )  # fmt: skip
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the daemon exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            request = health_pb2.HealthCheckRequest(service="SandboxService")
            answer = health.Check(request, timeout=2)  # type: ignore[attr-defined]
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                break
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the daemon did not serve within 60 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    stub = orchestrator_pb2_grpc.SandboxServiceStub(channel)
    return Daemon(process, channel, stub, grpc_port, proxy_port, base, log)


def stop_daemon(daemon: Daemon) -> None:
    daemon.channel.close()
    if daemon.process.poll() is None:
        daemon.process.send_signal(signal.SIGTERM)
    try:
        code = daemon.process.wait(120)
    except subprocess.TimeoutExpired:
        daemon.process.kill()
        code = daemon.process.wait()
    if code != 0:
        print(f"the daemon exited with {code}; its log's tail:\n{daemon.log.read_text()[-3000:]}")


@contextmanager
def running_daemon(storage: Path, root: Path) -> Iterator[Daemon]:
    daemon = start_daemon(storage, root)
    try:
        yield daemon
    finally:
        stop_daemon(daemon)


# -- creating ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    seconds: float
    retries: int
    error: str | None = None


def create_retrying(daemon: Daemon, sandbox_id: str, build: str) -> Attempt:
    """Create, asking again after RESOURCE_EXHAUSTED (E2B's placement would try another node)."""
    started = time.monotonic()
    retries = 0
    while True:
        try:
            daemon.create_once(sandbox_id, build)
            return Attempt(time.monotonic() - started, retries)
        except grpc.RpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                retries += 1
                time.sleep(RETRY_S)
                continue
            return Attempt(time.monotonic() - started, retries, f"{code.name}: {exc.details()}")


def create_many(
    daemon: Daemon, ids: Sequence[str], build: str, concurrency: int
) -> tuple[float, list[Attempt]]:
    """Create ``ids`` with ``concurrency`` clients at once; (wall seconds, attempts in order)."""
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        attempts = list(pool.map(lambda sandbox_id: create_retrying(daemon, sandbox_id, build), ids))
    return time.monotonic() - started, attempts


def delete_all(daemon: Daemon, ids: Sequence[str]) -> None:
    live = set(daemon.listed())
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(daemon.delete, [sandbox_id for sandbox_id in ids if sandbox_id in live]))


_ids = iter(range(10**9))


def new_ids(count: int, prefix: str = "b") -> list[str]:
    return [f"{prefix}{next(_ids):06d}" for _ in range(count)]


def p50(values: Sequence[float]) -> float:
    return statistics.median(values)


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


# -- 1. Create vs the library ------------------------------------------------------------------


def create_vs_library(daemon: Daemon, node: Node, build: str, runs: int) -> None:
    grpc_s: list[float] = []
    server_s: list[float] = []
    library_s: list[float] = []
    build_id = uuid.UUID(build)
    for _ in range(runs):
        [sandbox_id] = new_ids(1, "cmp")
        time.sleep(SETTLE_S)
        before = daemon.metrics().get("ember_sandbox_start_seconds_sum", 0.0)
        started = time.monotonic()
        daemon.create_once(sandbox_id, build)
        grpc_s.append(time.monotonic() - started)
        server_s.append(daemon.metrics().get("ember_sandbox_start_seconds_sum", 0.0) - before)
        daemon.delete(sandbox_id)

        time.sleep(SETTLE_S)
        node.workers.wait_ready()
        started = time.monotonic()
        sandbox = Sandbox.resume(node, ResumeOptions(build_id))
        library_s.append(time.monotonic() - started)
        sandbox.kill()
    ratio = p50(grpc_s) / p50(library_s)
    print(f"1. Create (resume) of the build, {runs} interleaved runs each (target: gRPC <= 1.1x the library)")
    print(
        f"  library Sandbox.resume, daemon's pools (baseline)  p50 {p50(library_s) * 1000:7.1f} ms   "
        f"p95 {p95(library_s) * 1000:7.1f} ms"
    )
    print(
        f"  gRPC Create                                        p50 {p50(grpc_s) * 1000:7.1f} ms   "
        f"p95 {p95(grpc_s) * 1000:7.1f} ms   {ratio:5.2f}x the library"
    )
    print(f"    of which the daemon's own start (its histogram)  p50 {p50(server_s) * 1000:7.1f} ms")


# -- 2. concurrent Creates ---------------------------------------------------------------------


def concurrency(daemon: Daemon, build: str, levels: Sequence[int], per_level: int) -> None:
    print(
        f"2. concurrent Creates, {per_level} sandboxes per level in batches of N at once, RESOURCE_EXHAUSTED "
        f"retried every {RETRY_S * 1000:.0f} ms (target: throughput at 4 >= 1.5x at 1)"
    )
    throughput: dict[int, float] = {}
    for level in levels:
        latencies: list[float] = []
        retries = failures = 0
        busy_s = 0.0
        errors: list[str] = []
        for _ in range(max(1, per_level // level)):
            time.sleep(SETTLE_S * 2)
            ids = new_ids(level, "c")
            wall, attempts = create_many(daemon, ids, build, level)
            busy_s += wall
            for attempt in attempts:
                retries += attempt.retries
                if attempt.error is None:
                    latencies.append(attempt.seconds)
                else:
                    failures += 1
                    errors.append(attempt.error)
            delete_all(daemon, ids)
        throughput[level] = len(latencies) / busy_s if busy_s else 0.0
        line = f"  {level} at once: "
        if latencies:
            line += f"p50 {p50(latencies) * 1000:7.1f} ms   p95 {p95(latencies) * 1000:7.1f} ms   "
        line += f"{throughput[level]:5.2f} sandboxes/s   retries {retries:4d}   failures {failures}"
        if 1 in throughput and level != 1 and throughput[1]:
            line += f"   {throughput[level] / throughput[1]:4.2f}x the throughput at 1"
        print(line)
        for error in errors[:3]:
            print(f"    failure: {error}")


# -- 3. memory per sandbox -------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    ember: Usage
    by_role: dict[str, Usage]
    qemu: Usage
    running: int
    helpers: dict[str, int]
    """Helper processes by command name (``comm``)."""


def snapshot(daemon: Daemon) -> Snapshot:
    tree = daemon.tree()
    by_role = {
        role: total(tree.roles[role]) for role in ("owner", "tracker", "forkserver", "keeper", "helper")
    }
    by_role["running sandboxes"] = total(tree.running_sandboxes())
    by_role["idle sandboxes"] = total(tree.idle_sandboxes())
    helpers: dict[str, int] = {}
    for pid in tree.roles["helper"]:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        helpers[name] = helpers.get(name, 0) + 1
    return Snapshot(
        total(tree.ember()), by_role, total(tree.roles["qemu"]), len(tree.running_sandboxes()), helpers
    )


def memory_per_sandbox(daemon: Daemon, build: str, count: int) -> None:
    time.sleep(MEASURE_SETTLE_S)
    empty = snapshot(daemon)
    ids = new_ids(count, "m")
    _, attempts = create_many(daemon, ids, build, 4)
    failed = [attempt.error for attempt in attempts if attempt.error]
    time.sleep(MEASURE_SETTLE_S)
    full = snapshot(daemon)
    delete_all(daemon, ids)
    started = full.running
    print(
        f"3. {count} sandboxes of one build running ({started} running at the measurement, "
        f"{len(failed)} failed to start): every ember process of the daemon's tree, not QEMU"
    )
    if not started:
        return
    per_kib = (full.ember.own_kib - empty.ember.own_kib) / started
    per_threads = (full.ember.threads - empty.ember.threads) / started
    print(
        f"  Pss_Anon+Pss_Shmem: {mib(empty.ember.own_kib):7.1f} MiB with 0 (baseline) -> "
        f"{mib(full.ember.own_kib):7.1f} MiB with {started}: {mib(per_kib):5.1f} MiB per sandbox "
        "(target <= 15)"
    )
    print(
        f"  threads:            {empty.ember.threads:7d} with 0 (baseline) -> {full.ember.threads:7d} with "
        f"{started}: {per_threads:5.1f} per sandbox (target <= 4)"
    )
    print("  by process, 0 -> N running (Pss_Anon+Pss_Shmem MiB / threads / processes):")
    for role in ("owner", "forkserver", "keeper", "tracker", "helper", "idle sandboxes", "running sandboxes"):
        before, after = empty.by_role[role], full.by_role[role]
        print(
            f"    {role:<18} {mib(before.own_kib):7.1f} / {before.threads:4d} / {before.processes:3d}  ->  "
            f"{mib(after.own_kib):7.1f} / {after.threads:4d} / {after.processes:3d}"
        )
    running = full.by_role["running sandboxes"]
    if running.processes:
        print(
            f"  one running sandbox process: {mib(running.own_kib / running.processes):5.1f} MiB "
            f"Pss_Anon+Pss_Shmem, {mib(running.anonymous / running.processes):5.1f} MiB Anonymous "
            f"(shared copy-on-write counted whole), {running.threads / running.processes:4.1f} threads"
        )
    if full.helpers:
        names = ", ".join(f"{count} {name}" for name, count in sorted(full.helpers.items()))
        print(f"  helper processes with {started} running: {names}")
    if full.qemu.processes:
        print(
            f"  for context, QEMU per sandbox: RSS {mib(full.qemu.rss / full.qemu.processes):6.1f} MiB, "
            f"Pss_Anon {mib(full.qemu.pss_anon / full.qemu.processes):6.1f} MiB, "
            f"{full.qemu.threads / full.qemu.processes:4.1f} threads"
        )


# -- 4. leaks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Holdings:
    fds: int
    daemon_fds: int
    threads: int
    processes: int
    slots: list[int]
    namespaces: list[int]
    mounts: int
    workspaces: int
    socket_dirs: int
    own_kib: int
    daemon_own_kib: int
    keeper_own_kib: int


def _owner_pid(path: Path) -> int | None:
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    return int(fields[0]) if fields and fields[0].isdigit() else None


def holdings(daemon: Daemon) -> Holdings:
    tree = daemon.tree()
    pids = set(tree.ember())
    ember = total(tree.ember())
    owner = total([daemon.process.pid])
    slots = sorted(
        int(entry.name)
        for entry in SLOT_OWNERS.glob("[0-9]*")
        if entry.name.isdigit() and _owner_pid(entry) in pids
    )
    names = set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set()
    namespaces = [idx for idx in slots if f"ns-{idx}" in names]
    prefix = str(daemon.base)
    with open("/proc/self/mountinfo") as table:
        mounts = sum(1 for line in table if line.split()[4].startswith(prefix))
    workspaces_dir = daemon.base / "sandbox"
    workspaces = len(list(workspaces_dir.iterdir())) if workspaces_dir.is_dir() else 0
    socket_dirs = sum(
        1 for entry in Path(tempfile.gettempdir()).glob("ember-sbx-*") if _owner_pid(entry / ".owner") in pids
    )
    return Holdings(
        fds=ember.fds,
        daemon_fds=owner.fds,
        threads=ember.threads,
        processes=ember.processes,
        slots=slots,
        namespaces=namespaces,
        mounts=mounts,
        workspaces=workspaces,
        socket_dirs=socket_dirs,
        own_kib=ember.own_kib,
        daemon_own_kib=owner.own_kib,
        keeper_own_kib=total(tree.roles["keeper"]).own_kib,
    )


def leaks(daemon: Daemon, build: str, cycles: int) -> None:
    time.sleep(MEASURE_SETTLE_S)
    before = holdings(daemon)
    failures: list[str] = []
    durations = []
    for sandbox_id in new_ids(cycles, "l"):
        started = time.monotonic()
        attempt = create_retrying(daemon, sandbox_id, build)
        if attempt.error is not None:
            failures.append(attempt.error)
            continue
        daemon.delete(sandbox_id)
        durations.append(time.monotonic() - started)
    time.sleep(MEASURE_SETTLE_S)
    after = holdings(daemon)
    rate = len(durations) / sum(durations) if durations else 0.0
    print(
        f"4. {cycles} Create/Delete cycles ({len(durations)} completed, {len(failures)} failed, "
        f"{rate:4.2f} cycles/s): before -> after (target: equal)"
    )
    rows = (
        ("file descriptors, ember processes", before.fds, after.fds),
        ("  of which the daemon process", before.daemon_fds, after.daemon_fds),
        ("threads, ember processes", before.threads, after.threads),
        ("ember processes", before.processes, after.processes),
        ("network slots owned", len(before.slots), len(after.slots)),
        ("their ns-* namespaces", len(before.namespaces), len(after.namespaces)),
        ("mounts under the base path", before.mounts, after.mounts),
        ("workspaces", before.workspaces, after.workspaces),
        ("socket dirs ($TMPDIR/ember-sbx-*)", before.socket_dirs, after.socket_dirs),
    )
    for label, first, last in rows:
        print(f"  {label:<38} {first:7d} -> {last:7d}")
    print(
        f"  {'Pss_Anon+Pss_Shmem, ember processes':<38} {mib(before.own_kib):7.1f} -> "
        f"{mib(after.own_kib):7.1f} MiB"
    )
    print(
        f"  {'  of which the daemon process':<38} {mib(before.daemon_own_kib):7.1f} -> "
        f"{mib(after.daemon_own_kib):7.1f} MiB"
    )
    print(
        f"  {'  of which the slot keeper':<38} {mib(before.keeper_own_kib):7.1f} -> "
        f"{mib(after.keeper_own_kib):7.1f} MiB"
    )
    for error in failures[:3]:
        print(f"    failure: {error}")


# -- 5. pause ----------------------------------------------------------------------------------


def event_times(log: Path, sandbox_id: str) -> dict[str, float]:
    """When each lifecycle event of ``sandbox_id`` was logged (epoch seconds, ms resolution)."""
    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if sandbox_id not in line or not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("sandbox_id") == sandbox_id and "event" in record:
            stamp = dt.datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
            found[record["event"]] = stamp.timestamp()
    return found


@dataclass(frozen=True)
class GrpcPause:
    call_s: float
    """The Pause call, as the control plane waits for it."""
    own_s: float
    """The daemon's pause time (``ember_sandbox_pause_seconds``): the pause sequence itself."""
    teardown_s: float | None
    """From the sandbox process's "stopped" event to the owner's "pause-finished" (its log)."""


def pause_grpc(daemon: Daemon, build: str, dirty_mib: int) -> GrpcPause:
    """A gRPC Pause after the guest dirtied ``dirty_mib``."""
    [sandbox_id] = new_ids(1, "p")
    attempt = create_retrying(daemon, sandbox_id, build)
    if attempt.error is not None:
        raise SystemExit(f"cannot create a sandbox to pause: {attempt.error}")
    done = daemon.envd(sandbox_id, token_of(sandbox_id)).run(
        DIRTY.format(size=dirty_mib + 16, mib=dirty_mib), timeout_s=600
    )
    if done.exit_code != 0:
        raise SystemExit(f"dirtying guest memory failed: {done.stderr.decode(errors='replace')}")
    before = daemon.metrics().get("ember_sandbox_pause_seconds_sum", 0.0)
    started = time.monotonic()
    daemon.stub.Pause(pb.SandboxPauseRequest(sandbox_id=sandbox_id, build_id=str(uuid.uuid4())), timeout=600)
    call = time.monotonic() - started
    own = daemon.metrics().get("ember_sandbox_pause_seconds_sum", 0.0) - before
    times = event_times(daemon.log, sandbox_id)
    teardown = None
    if "stopped" in times and "pause-finished" in times:
        teardown = times["pause-finished"] - times["stopped"]
    return GrpcPause(call, own, teardown)


def pause_cli(storage: Path, build: str, dirty_mib: int, root: Path) -> float:
    """The pause duration ``ember resume-build -cmd-pause`` prints."""
    command = [sys.executable, "-m", "ember", "resume-build", "-from-build", build, "-storage", str(storage),
               "-cmd-pause", DIRTY.format(size=dirty_mib + 16, mib=dirty_mib)]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, env=environment(root / "cli-base"), timeout=900, check=False
    )
    found = PAUSED_IN.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise SystemExit(
            f"resume-build -cmd-pause failed (exit {done.returncode}):\n{done.stderr}{done.stdout}"
        )
    return int(found.group(1)) / 1000


def pause_compare(daemon: Daemon, storage: Path, build: str, runs: int, root: Path) -> None:
    grpc_runs: list[GrpcPause] = []
    cli: list[float] = []
    for _ in range(runs):
        time.sleep(SETTLE_S)
        grpc_runs.append(pause_grpc(daemon, build, DIRTY_MIB))
        cli.append(pause_cli(storage, build, DIRTY_MIB, root))
    calls = [run.call_s for run in grpc_runs]
    own = [run.own_s for run in grpc_runs]
    teardown = [run.teardown_s for run in grpc_runs if run.teardown_s is not None]
    print(
        f"5. pause after the guest wrote {DIRTY_MIB} MiB into a tmpfs, {runs} interleaved runs each "
        "(target: gRPC Pause <= 1.1x the CLI's)"
    )
    print(f"  resume-build -cmd-pause, printed 'paused in' (baseline)    p50 {p50(cli) * 1000:7.1f} ms")
    print(
        f"  gRPC Pause call                                           p50 {p50(calls) * 1000:7.1f} ms   "
        f"{p50(calls) / p50(cli):5.2f}x the CLI's"
    )
    print(
        f"    the daemon's own pause time (the CLI's measure)         p50 {p50(own) * 1000:7.1f} ms   "
        f"{p50(own) / p50(cli):5.2f}x"
    )
    if teardown:
        print(
            f"    before the reply: guest servers stopped -> released   p50 {p50(teardown) * 1000:7.1f} ms "
            "(sandbox process exit, slot and workspace release; from the daemon's log)"
        )


# -- 6a. page serving in guests ----------------------------------------------------------------


def held_build(daemon: Daemon, build: str, hold_mib: int) -> str:
    """A build paused from ``build`` after its guest wrote ``hold_mib`` MiB into a tmpfs."""
    [sandbox_id] = new_ids(1, "h")
    attempt = create_retrying(daemon, sandbox_id, build)
    if attempt.error is not None:
        raise SystemExit(f"cannot create a sandbox to fill: {attempt.error}")
    done = daemon.envd(sandbox_id, token_of(sandbox_id)).run(
        HOLD.format(size=hold_mib + 16, mib=hold_mib), timeout_s=600
    )
    if done.exit_code != 0:
        raise SystemExit(f"filling guest memory failed: {done.stderr.decode(errors='replace')}")
    held = str(uuid.uuid4())
    daemon.stub.Pause(pb.SandboxPauseRequest(sandbox_id=sandbox_id, build_id=held), timeout=600)
    return held


def read_in_guests(daemon: Daemon, ids: Sequence[str]) -> float:
    """Every guest reads its held file at once; wall seconds until the last is done."""
    barrier = threading.Barrier(len(ids))

    def read(sandbox_id: str) -> None:
        client = daemon.envd(sandbox_id, token_of(sandbox_id))
        barrier.wait()
        done = client.run(READ_HOLD, timeout_s=600)
        if done.exit_code != 0:
            raise SystemExit(f"reading the held file failed: {done.stderr.decode(errors='replace')}")

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(ids)) as pool:
        list(pool.map(read, ids))
    return time.monotonic() - started


def guest_page_serving(daemon: Daemon, build: str, hold_mib: int, counts: Sequence[int]) -> None:
    held = held_build(daemon, build, hold_mib)
    print(
        f"6a. page serving in guests: each guest reads {hold_mib} MiB it holds in a tmpfs, all at once "
        "(baseline: the same read again, memory loaded)"
    )
    for count in counts:
        time.sleep(SETTLE_S * 2)
        ids = new_ids(count, "g")
        _, attempts = create_many(daemon, ids, held, min(count, 4))
        failed = [attempt.error for attempt in attempts if attempt.error]
        if failed:
            delete_all(daemon, ids)
            print(f"  {count} sandboxes: {len(failed)} failed to start: {failed[0]}")
            continue
        time.sleep(SETTLE_S * 2)
        before = daemon.metrics().get("ember_memory_read_bytes_total", 0.0)
        cold = read_in_guests(daemon, ids)
        served = daemon.metrics().get("ember_memory_read_bytes_total", 0.0) - before
        warm = read_in_guests(daemon, ids)
        delete_all(daemon, ids)
        total_mib = hold_mib * count
        print(
            f"  {count} sandbox{'es' if count > 1 else '  '}: first read {total_mib / cold:7.1f} MiB/s "
            "aggregate "
            f"({cold:5.2f} s, {served / (1 << 20):6.1f} MiB served lazily)   "
            f"second read (baseline) {total_mib / warm:7.1f} MiB/s ({warm:5.2f} s)"
        )


# -- 6b. the memory file alone -----------------------------------------------------------------

SERVE_CHILD = r"""
import sys, uuid
from contextlib import ExitStack
from pathlib import Path
from ember.build import BuildFile
from ember.memory import LazyMemory
from ember.storage import MEMFILE, LocalStorage
storage, work = LocalStorage(Path(sys.argv[1])), Path(sys.argv[2])
build, count = uuid.UUID(sys.argv[3]), int(sys.argv[4])
with ExitStack() as stack:
    for _ in range(count):
        lazy = stack.enter_context(LazyMemory(BuildFile.open(storage, build, MEMFILE), work, 4096))
        print(lazy.path, flush=True)
    sys.stdin.read()
"""

TOUCH_CHILD = r"""
import json, mmap, os, sys, time
import numpy as np
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
m.madvise(mmap.MADV_RANDOM)
pages = np.frombuffer(m, dtype=np.uint8)
order = np.random.default_rng(1).permutation(size // 4096) * 4096
print("ready", flush=True)
sys.stdin.readline()
start = time.monotonic()
total = int(pages[order].sum())
end = time.monotonic()
del pages
m.close()
os.close(fd)
print(json.dumps({"start": start, "end": end, "checksum": total}), flush=True)
"""


@contextmanager
def served(storage: Path, work: Path, build: uuid.UUID, groups: Sequence[int]) -> Iterator[list[Path]]:
    """Memory files served by one process per entry of ``groups``, each with that many mounts."""
    with ExitStack() as stack:
        paths: list[Path] = []
        for count in groups:
            # libfuse says "fuse_remove_signal_handlers: unknown session" when a process with
            # several mounts unmounts them (only one session owns its signal handlers): harmless,
            # so the servers' stderr goes to a file, shown only when a server fails.
            errors = stack.enter_context((work / "servers.log").open("a"))
            child = subprocess.Popen(
                [sys.executable, "-c", SERVE_CHILD, str(storage), str(work), str(build), str(count)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True,
            )  # fmt: skip
            stack.callback(child.wait, 60)
            stack.callback(child.communicate, "")
            assert child.stdout is not None
            for _ in range(count):
                line = child.stdout.readline().strip()
                if not line:
                    raise SystemExit(
                        f"a memory server did not mount its file:\n{(work / 'servers.log').read_text()}"
                    )
                paths.append(Path(line))
        yield paths


def touch_all(paths: Sequence[Path]) -> float:
    """One reader per file, started together; seconds from the first start to the last end."""
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", TOUCH_CHILD, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for path in paths
    ]
    for reader in readers:
        assert reader.stdout is not None
        if reader.stdout.readline().strip() != "ready":
            raise SystemExit("a reader could not map its memory file")
    for reader in readers:
        assert reader.stdin is not None
        reader.stdin.write("go\n")
        reader.stdin.flush()
    results = []
    for reader in readers:
        out, _ = reader.communicate()
        results.append(json.loads(out))
    if len({r["checksum"] for r in results}) != 1:
        raise SystemExit("the memory files served different bytes")
    return float(max(r["end"] for r in results) - min(r["start"] for r in results))


def file_page_serving(root: Path, size_mib: int, counts: Sequence[int], runs: int) -> None:
    storage_dir = root / "pages"
    storage = LocalStorage(storage_dir)
    ram = root / "pages-ram"
    ram.write_bytes(np.random.default_rng(5).integers(1, 256, size_mib << 20, dtype=np.uint8).tobytes())
    build = store_memfile(storage, ram, size_mib << 20, PAGE_SIZE, root)
    ram.unlink()
    work = root / "pages-work"
    work.mkdir()
    print(
        f"6b. the memory file alone: N mounts of a {size_mib} MiB memfile, one reader per mount touching "
        f"every 4 KiB page in random order (MADV_RANDOM), best of {runs}"
    )
    for count in counts:
        rates: dict[str, float] = {}
        for label, groups in (
            ("one process, N mounts (baseline)", [count]),
            ("a process per mount", [1] * count),
        ):
            best = float("inf")
            for _ in range(runs):
                with served(storage_dir, work, build, groups) as paths:
                    seconds = touch_all(paths)
                best = min(best, seconds)
            rates[label] = count * size_mib / best
        one, each = rates["one process, N mounts (baseline)"], rates["a process per mount"]
        print(
            f"  N={count}: one process serving all {one:7.1f} MiB/s aggregate (baseline)   "
            f"a process per mount {each:7.1f} MiB/s   {each / one:4.2f}x"
        )


# -- main --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    resumes: int
    levels: tuple[int, ...]
    per_level: int
    many: int
    cycles: int
    pauses: int
    hold_mib: int
    file_mib: int
    file_runs: int


FULL = Size(10, (1, 2, 4, 8), 8, 20, 200, 3, 64, 64, 2)
QUICK = Size(3, (1, 2, 4), 4, 5, 20, 1, 32, 16, 1)


SECTIONS = ("1", "2", "3", "4", "5", "6a", "6b")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="3 resumes, 1/2/4 at once, 5 sandboxes, 20 cycles"
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"sections to run, comma-separated, of {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch directory (store, daemon log) and print it"
    )
    args = parser.parse_args()
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    if not only <= set(SECTIONS):
        parser.error(f"--only takes sections of {','.join(SECTIONS)}")
    size = QUICK if args.quick else FULL
    os.environ.setdefault("HOST_KERNELS_DIR", KERNELS)
    with ExitStack() as scratch:
        if args.keep:
            root = Path(tempfile.mkdtemp(prefix="bench-orch-", dir="/var/tmp"))
            scratch.callback(print, f"kept {root}")
        else:
            root = Path(
                scratch.enter_context(tempfile.TemporaryDirectory(prefix="bench-orch-", dir="/var/tmp"))
            )
        store = root / "store"
        began = time.monotonic()
        build = str(create(store))
        print(
            f"setup {time.monotonic() - began:.1f} s: build {build}, 512 MiB guest; figures taken under "
            "whatever else runs on this machine"
        )
        if only - {"6b"}:
            with running_daemon(store, root) as daemon:
                if "1" in only:
                    with daemon_like_node(str(store), node_env(str(store), root, "library")) as node:
                        create_vs_library(daemon, node, build, size.resumes)
                sections: dict[str, Callable[[Daemon], None]] = {
                    "2": lambda d: concurrency(d, build, size.levels, size.per_level),
                    "3": lambda d: memory_per_sandbox(d, build, size.many),
                    "4": lambda d: leaks(d, build, size.cycles),
                    "5": lambda d: pause_compare(d, store, build, size.pauses, root),
                    "6a": lambda d: guest_page_serving(d, build, size.hold_mib, (1, 4)),
                }
                for key, section in sections.items():
                    if key in only:
                        section(daemon)
        if "6b" in only:
            file_page_serving(root, size.file_mib, (1, 4), size.file_runs)
        print(f"total {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    main()

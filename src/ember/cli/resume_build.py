"""``ember resume-build``: resume a sandbox from a build, then benchmark, run a command, or pause it."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ember.cli.flags import FlagParser, build_id, non_negative
from ember.cli.render import DEFAULT_STORAGE
from ember.environment import Environment
from ember.errors import BuildError, UsageError
from ember.network import SlotPool
from ember.sandbox.resume import (
    OPTIMIZE_RUNS,
    LoadedBuild,
    RunningSandbox,
    load_build,
    record_prefetch,
    save_prefetch,
)
from ember.storage import ChunkCache, LocalStorage, Storage, open_storage

SUMMARY = "resume a sandbox from a build: interactive, benchmark, run a command, or pause into a new build"

COMMAND_TIMEOUT_S = 600.0


def build_parser() -> FlagParser:
    parser = FlagParser("ember resume-build", SUMMARY)
    parser.add_flag(
        "from-build",
        help="build ID (UUID) to resume from (required)",
        metavar="<uuid>",
        type=build_id,
        required=True,
    )
    parser.add_flag(
        "to-build",
        help="output build ID for the pause snapshot (default: a new UUID)",
        metavar="<uuid>",
        type=build_id,
    )
    parser.add_flag(
        "storage",
        help="local path, gs://bucket or s3://bucket (default .local-build)",
        metavar="<path>",
        default=DEFAULT_STORAGE,
    )
    parser.add_flag(
        "sandbox-dir",
        help="override SANDBOX_DIR (baked into Firecracker snapshots; QEMU builds do not depend on it)",
        metavar="<path>",
    )
    parser.add_flag(
        "iterations",
        help="number of resumes to measure, 0 = interactive (default 0)",
        metavar="<n>",
        type=non_negative,
        default=0,
    )
    parser.add_bool("cold", help="clear the chunk cache and the host page cache between iterations")
    parser.add_bool("no-prefetch", help="disable memory prefetching")
    parser.add_bool("v", help="verbose: log what each part does, and count storage chunks fetched")
    parser.add_flag(
        "cmd", help="run this command in the sandbox, print its output, and exit", metavar="<cmd>"
    )
    parser.add_bool("pause", help="resume and immediately pause into -to-build")
    parser.add_flag(
        "signal-pause", help="wait for this signal (e.g. SIGUSR1, SIGTERM), then pause", metavar="<signal>"
    )
    parser.add_flag(
        "cmd-pause", help="run this command in the sandbox, then pause on success", metavar="<cmd>"
    )
    parser.add_flag(
        "cmd-signal-pause",
        help="start this command in the sandbox, then wait for SIGUSR1 and pause",
        metavar="<cmd>",
    )
    parser.add_bool(
        "optimize",
        help="after the pause, resume the new build twice and save the pages both read as its prefetch data",
    )
    return parser


def _pause_mode(options: argparse.Namespace) -> str | None:
    modes = [
        name for name in ("pause", "signal_pause", "cmd_pause", "cmd_signal_pause") if getattr(options, name)
    ]
    if len(modes) > 1:
        raise UsageError("pick at most one of -pause, -signal-pause, -cmd-pause, -cmd-signal-pause")
    if options.cmd and modes:
        raise UsageError("-cmd runs a command and exits: it cannot be combined with a pause flag")
    if options.optimize and options.iterations:
        raise UsageError("-optimize cannot be combined with -iterations: it records one pause's data")
    for flag in ("to_build", "optimize"):
        if getattr(options, flag) and not modes:
            raise UsageError(
                f"-{flag.replace('_', '-')} needs a pause flag "
                "(-pause, -signal-pause, -cmd-pause or -cmd-signal-pause)"
            )
    if modes and options.iterations:
        raise UsageError("-iterations cannot be combined with a pause flag: a pause ends the sandbox")
    return modes[0] if modes else None


def _signal(name: str) -> signal.Signals:
    try:
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except KeyError:
        raise UsageError(f"unknown signal {name!r}: use a name such as SIGUSR1 or SIGTERM") from None


def run(options: argparse.Namespace) -> int:
    mode = _pause_mode(options)
    wait_signal = _signal(options.signal_pause) if options.signal_pause else None
    if options.v:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    env = Environment.resolve(options.storage)
    storage: Storage = open_storage(options.storage)
    cache: ChunkCache | None = None
    if not isinstance(storage, LocalStorage):
        env.snapshot_cache_dir.mkdir(parents=True, exist_ok=True)
        cache = ChunkCache(storage, env.snapshot_cache_dir)
        storage = cache
    work_root = env.orchestrator_base_path / "sandbox"
    work_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="resume-", dir=work_root) as scratch, SlotPool() as pool:
        print(f"📦 Loading {options.from_build}...")
        build = load_build(storage, options.from_build, Path(scratch))
        _print_build(build)
        if options.iterations:
            return _benchmark(build, env, Path(scratch), pool, options, cache)
        prefetch = not options.no_prefetch
        with RunningSandbox(build, env, Path(scratch) / "sandbox", pool, prefetch=prefetch) as sandbox:
            print(f"✅ Running (resumed in {sandbox.resumed_in_s * 1000:.1f}ms)")
            if options.v:
                timings = sandbox.timings
                print(
                    f"   prepare {timings.prepare_s * 1000:.1f}ms, restore {timings.restore_s * 1000:.1f}ms, "
                    f"envd /init {timings.init_s * 1000:.1f}ms"
                )
                if cache is not None:
                    print(f"   storage chunks fetched: {cache.stats().chunks_fetched}")
            if options.cmd:
                return _run_command(sandbox, options.cmd)
            if mode is None:
                _interactive(sandbox)
                return 0
            if mode == "cmd_pause":
                if _run_command(sandbox, options.cmd_pause) != 0:
                    raise BuildError(f"command {options.cmd_pause!r} failed: not pausing")
            elif mode == "cmd_signal_pause":
                sandbox.envd.start(options.cmd_signal_pause, timeout_s=COMMAND_TIMEOUT_S).close()
                _wait_for_signal(signal.SIGUSR1)
            elif mode == "signal_pause" and wait_signal is not None:
                _wait_for_signal(wait_signal)
            new_build = options.to_build or uuid.uuid4()
            result = sandbox.pause(storage, new_build, lambda line: print(line, flush=True))
            print("✅ Snapshot uploaded successfully")
            print(f"✅ Build finished: {result.build_id} (paused in {result.duration_s * 1000:.0f}ms)")
        if options.optimize:
            print(f"🔎 Recording prefetch data: resuming {result.build_id} {OPTIMIZE_RUNS} times", flush=True)
            mapping = record_prefetch(
                storage, result.build_id, env, Path(scratch) / "optimize", pool, progress=print
            )
            save_prefetch(storage, result.build_id, mapping)
            print(f"✅ Prefetch mapping saved: {len(mapping.indices)} blocks")
    return 0


def _print_build(build: LoadedBuild) -> None:
    template = build.metadata.template
    memfile, rootfs = build.memfile, build.rootfs
    print(f"Kernel: {template.kernel_version}, Firecracker: {template.firecracker_version}")
    print(f"Memfile: {memfile.size >> 20} MB ({memfile.block_size >> 10} KB blocks)")
    print(f"Rootfs: {rootfs.size >> 20} MB ({rootfs.block_size >> 10} KB blocks)")
    prefetch = build.metadata.prefetch
    print(f"Prefetch: {len(prefetch.indices) if prefetch else 0} blocks")


def _run_command(sandbox: RunningSandbox, cmd: str) -> int:
    started = time.monotonic()
    result = sandbox.envd.run(
        cmd, on_stdout=_relay(sys.stdout), on_stderr=_relay(sys.stderr), timeout_s=COMMAND_TIMEOUT_S
    )
    command_s = time.monotonic() - started
    print(
        f"Resume: {sandbox.resumed_in_s * 1000:.1f}ms, Command: {command_s * 1000:.1f}ms, "
        f"Total: {(sandbox.resumed_in_s + command_s) * 1000:.1f}ms, exit code {result.exit_code}"
    )
    return result.exit_code


def _relay(stream: TextIO) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        stream.buffer.write(data)
        stream.flush()

    return write


def _wait_for_signal(wanted: signal.Signals) -> None:
    received = threading.Event()
    previous = signal.signal(wanted, lambda signum, frame: received.set())
    try:
        print(f"⏳ Waiting for {wanted.name} (kill -{wanted.name} {os.getpid()}) before pausing", flush=True)
        while not received.wait(0.5):
            pass
    finally:
        signal.signal(wanted, previous)


def _interactive(sandbox: RunningSandbox) -> None:
    slot = sandbox.slot
    print(f"   envd: http://{slot.host_ip}:49983 (try: curl -si http://{slot.host_ip}:49983/health)")
    print(
        f"   guest: {slot.guest_ip} inside network namespace {slot.namespace} "
        f"(sudo ip netns exec {slot.namespace} <command>)"
    )
    print("   Press Ctrl+C to stop the sandbox (nothing is saved)")
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not stop.wait(0.5):
            sandbox.vm.check_alive()
        print("⏹ Stopping the sandbox", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _drop_caches(cache: ChunkCache | None) -> None:
    if cache is not None:
        cache.close()
        for entry in cache.root.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
    subprocess.run(["sync"], check=False)
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _benchmark(
    build: LoadedBuild,
    env: Environment,
    scratch: Path,
    pool: SlotPool,
    options: argparse.Namespace,
    cache: ChunkCache | None,
) -> int:
    durations: list[float] = []
    for iteration in range(options.iterations):
        if options.cold:
            _drop_caches(cache)
        work = scratch / f"run-{iteration}"
        with RunningSandbox(build, env, work, pool, prefetch=not options.no_prefetch) as sandbox:
            durations.append(sandbox.resumed_in_s * 1000)
        average = statistics.fmean(durations)
        deviation = (durations[-1] - average) / average * 100 if average else 0.0
        print(f"[{iteration + 1:2d}] {durations[-1]:.1f}ms  {deviation:+.1f}%", flush=True)
    print(render_statistics(durations))
    return 0


def render_statistics(durations_ms: list[float]) -> str:
    """The seed's summary: Min | Max | Avg | StdDev, then P95 | P99 (index floor((n-1)*p))."""
    ordered = sorted(durations_ms)

    def percentile(fraction: float) -> float:
        return ordered[math.floor((len(ordered) - 1) * fraction)]

    spread = statistics.stdev(ordered) if len(ordered) > 1 else 0.0
    return "\n".join(
        [
            f"Min: {ordered[0]:.1f}ms | Max: {ordered[-1]:.1f}ms | Avg: {statistics.fmean(ordered):.1f}ms | "
            f"StdDev: {spread:.1f}ms",
            f"P95: {percentile(0.95):.1f}ms | P99: {percentile(0.99):.1f}ms",
        ]
    )

"""``ember resume-build``: resume a sandbox from a build, then benchmark, run a command, or pause it."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import signal
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import TextIO

from ember.build import BuildFile
from ember.cli.flags import FlagParser, build_id, non_negative
from ember.cli.progress import EventPrinter, stop_on_signals
from ember.cli.render import DEFAULT_STORAGE
from ember.envd.records import ProcessResult
from ember.environment import Environment
from ember.errors import BuildError, UsageError
from ember.header import check_can_derive
from ember.memory import merge_runs
from ember.sandbox import BuildInfo, Node, ResumeOptions, Sandbox, SandboxState, save_prefetch
from ember.storage import MEMFILE, ROOTFS, ChunkCache

SUMMARY = "resume a sandbox from a build: interactive, benchmark, run a command, or pause into a new build"

COMMAND_TIMEOUT_S = 600.0
OPTIMIZE_RUNS = 2
OPTIMIZE_SETTLE_S = 1.0
HEALTH_POLL_S = 0.5


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
        help="override SANDBOX_DIR, where Firecracker builds expect their rootfs and kernel "
        "(QEMU builds do not depend on it)",
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
    environ = dict(os.environ)
    if options.sandbox_dir:
        environ["SANDBOX_DIR"] = options.sandbox_dir
    env = Environment.resolve(options.storage, environ)
    with (
        stop_on_signals(),
        Node(
            options.storage,
            env=env,
            events=EventPrinter(options.v),
            worker_log_level=logging.INFO if options.v else logging.WARNING,
        ) as node,
    ):
        if node.reclaimed.count:
            print(f"🧹 Reclaimed what killed sandboxes left: {node.reclaimed.summary()}")
        print(f"📦 Loading {options.from_build}...")
        build = node.build_info(options.from_build)
        _print_build(node, build)
        new_build = options.to_build or uuid.uuid4()
        if mode is not None:
            _check_pausable(node, build, new_build)
        node.workers.wait_ready()
        if options.iterations:
            return _benchmark(node, build, options)
        reported: set[uuid.UUID] = set()
        try:
            return _run_sandbox(node, build, options, mode, wait_signal, new_build, reported)
        except BaseException:
            if mode is not None:
                # A build this command did not report (SIGTERM came as the pause returned) goes
                # too, complete or not: the command is about to say it failed.
                node.release_claim(new_build, keep_complete=new_build in reported)
            raise


def _run_sandbox(
    node: Node,
    build: BuildInfo,
    options: argparse.Namespace,
    mode: str | None,
    wait_signal: signal.Signals | None,
    new_build: uuid.UUID,
    reported: set[uuid.UUID],
) -> int:
    resume = ResumeOptions(build.build_id, prefetch=not options.no_prefetch)
    started = time.monotonic()
    with Sandbox.resume(node, resume) as sandbox:
        resumed_s = time.monotonic() - started
        print(f"✅ Running (resumed in {resumed_s * 1000:.1f}ms)")
        print(f"   sandbox {sandbox.id} in network slot {sandbox.slot.idx}", flush=True)
        if options.v and sandbox.started is not None:
            report = sandbox.started
            print(
                f"   prepare {report.prepare_s * 1000:.1f}ms, restore {report.restore_s * 1000:.1f}ms, "
                f"envd /init {report.init_s * 1000:.1f}ms"
            )
            if isinstance(node.storage, ChunkCache):
                # The sandbox process reads the guest's memory and disk, so it counts the chunks.
                print(f"   storage chunks fetched: {sandbox.usage().chunks_fetched}")
        if options.cmd:
            code = _run_command(sandbox, options.cmd, resumed_s)
            sandbox.check()
            return code
        if mode is None:
            _interactive(sandbox)
            return 0
        if mode == "cmd_pause":
            if _run_command(sandbox, options.cmd_pause, resumed_s) != 0:
                raise BuildError(f"command {options.cmd_pause!r} failed: not pausing")
        elif mode == "cmd_signal_pause":
            sandbox.envd.start(options.cmd_signal_pause, timeout_s=COMMAND_TIMEOUT_S).close()
            _wait_for_signal(sandbox, signal.SIGUSR1)
        elif mode == "signal_pause" and wait_signal is not None:
            _wait_for_signal(sandbox, wait_signal)
        result = sandbox.pause(new_build, claimed=True)
        reported.add(result.build_id)  # before the lines: a build is never removed once announced
        print("✅ Snapshot uploaded successfully")
        print(f"✅ Build finished: {result.build_id} (paused in {result.duration_s * 1000:.0f}ms)")
    if options.optimize:
        _optimize(node, result.build_id)
    return 0


def _check_pausable(node: Node, build: BuildInfo, new_build: uuid.UUID) -> None:
    """What a pause will need, checked before the sandbox runs: the target claimed, headers derivable."""
    for name in (MEMFILE, ROOTFS):
        check_can_derive(BuildFile.open(node.storage, build.build_id, name).header)
    node.claim(new_build, f"resume-build -pause of {build.build_id}")


def _print_build(node: Node, build: BuildInfo) -> None:
    template = build.metadata.template
    print(f"Kernel: {template.kernel_version}, VMM: {template.firecracker_version} ({build.vmm.value})")
    memfile = BuildFile.open(node.storage, build.build_id, MEMFILE)
    rootfs = BuildFile.open(node.storage, build.build_id, ROOTFS)
    print(f"Memfile: {memfile.size >> 20} MB ({memfile.block_size >> 10} KB blocks)")
    print(f"Rootfs: {rootfs.size >> 20} MB ({rootfs.block_size >> 10} KB blocks)")
    prefetch = build.metadata.prefetch
    print(f"Prefetch: {len(prefetch.indices) if prefetch else 0} blocks")


def _run_command(sandbox: Sandbox, cmd: str, resumed_s: float) -> int:
    started = time.monotonic()
    result = _while_healthy(
        sandbox,
        lambda: sandbox.envd.run(
            cmd, on_stdout=_relay(sys.stdout), on_stderr=_relay(sys.stderr), timeout_s=COMMAND_TIMEOUT_S
        ),
    )
    command_s = time.monotonic() - started
    print(
        f"Resume: {resumed_s * 1000:.1f}ms, Command: {command_s * 1000:.1f}ms, "
        f"Total: {(resumed_s + command_s) * 1000:.1f}ms, exit code {result.exit_code}"
    )
    return result.exit_code


def _while_healthy(sandbox: Sandbox, work: Callable[[], ProcessResult]) -> ProcessResult:
    """``work``'s result; the sandbox's failure instead, as soon as ``check`` sees one.

    A guest whose disk or memory writes fail (the host's disk is full) may never finish its
    command: its writes are retried or block. So the command runs in a thread while this
    one checks the sandbox every ``HEALTH_POLL_S``, and a failure ends the wait with its reason.
    """
    outcome: Future[ProcessResult] = Future()

    def run() -> None:
        try:
            outcome.set_result(work())
        except BaseException as exc:  # handed to the waiting thread, or dropped once it gave up
            outcome.set_exception(exc)

    threading.Thread(target=run, name="command", daemon=True).start()
    while True:
        try:
            return outcome.result(timeout=HEALTH_POLL_S)
        except TimeoutError:
            if sandbox.state is not SandboxState.RUNNING:  # its process exited: say why
                raise BuildError(f"the sandbox ended: {sandbox.failure or 'it stopped'}") from None
            sandbox.check()


def _relay(stream: TextIO) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        stream.buffer.write(data)
        stream.flush()

    return write


def _wait_for_signal(sandbox: Sandbox, wanted: signal.Signals) -> None:
    """Wait for ``wanted``; the sandbox ending first (its VM died) is an error."""
    received = threading.Event()
    previous = signal.signal(wanted, lambda signum, frame: received.set())
    try:
        print(f"⏳ Waiting for {wanted.name} (kill -{wanted.name} {os.getpid()}) before pausing", flush=True)
        while not received.wait(0.5):
            if sandbox.wait(0) is not sandbox.state.RUNNING:
                raise BuildError(f"the sandbox ended before {wanted.name}: {sandbox.failure or 'it stopped'}")
    finally:
        signal.signal(wanted, previous)


def _interactive(sandbox: Sandbox) -> None:
    slot = sandbox.slot
    print(f"   envd: {sandbox.envd_url} (try: curl -si {sandbox.envd_url}/health)")
    print(f"   envd access token: {sandbox.identity.access_token} (send it as X-Access-Token)")
    print(
        f"   guest: {slot.guest_ip} inside network namespace {slot.namespace} "
        f"(sudo ip netns exec {slot.namespace} <command>)"
    )
    print("   Press Ctrl+C to stop the sandbox (nothing is saved)", flush=True)
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not stop.wait(0.5):
            if sandbox.wait(0) is not sandbox.state.RUNNING:
                raise BuildError(f"the sandbox ended: {sandbox.failure or 'it stopped'}")
        print("⏹ Stopping the sandbox", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _optimize(node: Node, build_id: uuid.UUID) -> None:
    """Resume the new build ``OPTIMIZE_RUNS`` times without prefetch; save the pages every run read."""
    print(f"🔎 Recording prefetch data: resuming {build_id} {OPTIMIZE_RUNS} times", flush=True)
    recorded = []
    for run in range(OPTIMIZE_RUNS):
        with Sandbox.resume(node, ResumeOptions(build_id, prefetch=False)) as sandbox:
            time.sleep(OPTIMIZE_SETTLE_S)
            recorded.append(sandbox.accesses())
        print(f"   prefetch run {run + 1}/{OPTIMIZE_RUNS}: {len(recorded[-1])} pages read", flush=True)
    mapping = merge_runs(recorded)
    save_prefetch(node.storage, build_id, mapping)
    node.forget_build(build_id)  # its metadata.json now names the prefetch mapping
    print(f"✅ Prefetch mapping saved: {len(mapping.indices)} blocks")


def _benchmark(node: Node, build: BuildInfo, options: argparse.Namespace) -> int:
    durations: list[float] = []
    resume = ResumeOptions(build.build_id, prefetch=not options.no_prefetch)
    for iteration in range(options.iterations):
        if options.cold:
            node.drop_caches()
        node.workers.wait_ready()
        started = time.monotonic()
        with Sandbox.resume(node, dataclasses.replace(resume)):
            durations.append((time.monotonic() - started) * 1000)
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

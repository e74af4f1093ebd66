"""Template builds on a node: a step through ``TemplateService`` vs the same step with ``ember
resume-build``, and a rebuild from the layer cache vs the first build; each figure beside a
baseline measured in the same run.

Setup (~30 s): ``ember create-build`` of the default template (512 MiB guest, hugepages off)
into a temp storage: the parent build. ``ember orchestrator`` on loopback ports with an
ORCHESTRATOR_BASE_PATH of its own (bench_orchestrator's ``running_daemon``), driven with
``TemplateService`` over gRPC as the control plane drives it: ``TemplateCreate``, then
``TemplateBuildStatus`` every ``POLL_S`` with the log from an offset, until Completed. Then:

1. **A RUN step.** A template of the parent build with one RUN step (``STEP_CMD``: 16 MiB of
   random bytes written to the rootfs and hashed), forced past the layer cache, against
   ``ember resume-build -from-build <parent> -cmd-pause STEP_CMD -to-build <new>`` (resume, run,
   pause into a new build: what the step does by hand), interleaved. The step's time is taken
   from the node's own log stamps: from its ``RUN`` line (logged before the resume) to the
   ``finalizing the template`` line (logged once the step's layer is paused and recorded); the
   build's whole time (TemplateCreate to Completed, with the finalize: a second resume and
   pause) is beside it. The CLI's figure is its wall time, process start to exit (what a user
   scripting layers by hand waits), with the "resumed in" and "paused in" it prints beside.
   The daemon has its pools (a sandbox process forked and a network slot made ahead); the
   CLI's node makes its slot when it starts.
2. **Cached rebuild.** A template of three RUN steps and a start + ready command (fresh
   commands each run, so the first build runs them all), built, then built again with the
   same steps: every step from the cache, only the finalize (resume, start command, ready,
   pause) runs. Wall time of each, TemplateCreate to Completed, and the layers the log says
   came from the cache.

Every figure is taken under whatever else runs on this 2-core machine (the load average is
printed): compare a figure with its baseline from the same run, not with another run's.

Needs root, /dev/fuse, qemu-system-x86_64 and a provisioned kernel (HOST_KERNELS_DIR,
default /var/cache/ember/kernels).

    python bench/bench_templates.py            # 5 step runs each, 3 first/cached pairs
    python bench/bench_templates.py --quick    # 2 step runs each, 1 first/cached pair
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench_orchestrator import Daemon, running_daemon
from bench_resume import KERNELS, create, environment
from ember.rpc import template_manager_pb2 as tpb
from ember.rpc import template_manager_pb2_grpc

POLL_S = 0.1
BUILD_TIMEOUT_S = 900.0
SETTLE_S = 1.0
"""Between runs: the daemon's pools refill after a build's sandboxes end."""
STEP_CMD = "dd if=/dev/urandom of=/root/step.bin bs=1M count=16 2>/dev/null && sha256sum /root/step.bin"
START_CMD = "python3 -m http.server 8000"
READY_CMD = '[ -n "$(ss -Htuln sport = :8000)" ]'
FINALIZING = "finalizing the template"
RESUMED_IN = re.compile(r"resumed in ([\d.]+)ms")
PAUSED_IN = re.compile(r"paused in (\d+)ms")


def p50(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def load() -> str:
    return "load average " + " / ".join(f"{value:.2f}" for value in os.getloadavg())


@dataclass(frozen=True)
class Built:
    """One template build as the client saw it, and the node's stamps of its log lines."""

    seconds: float
    stamps: list[tuple[float, str, str]]  # (seconds since the epoch, step, message)

    def at(self, prefix: str) -> float:
        return next(stamp for stamp, _, message in self.stamps if message.startswith(prefix))

    @property
    def cached(self) -> int:
        return sum(message.startswith("CACHED ") for _, _, message in self.stamps)


def build(daemon: Daemon, parent: str, steps: list[tpb.TemplateStep], start: bool = False) -> Built:
    """TemplateCreate of ``steps`` on ``parent``, then TemplateBuildStatus until it ends."""
    service = template_manager_pb2_grpc.TemplateServiceStub(daemon.channel)
    build_id = str(uuid.uuid4())
    config = tpb.TemplateConfig(
        templateID="bench-templates", buildID=build_id, memoryMB=512, vCpuCount=2, steps=steps,
        fromTemplate=tpb.FromTemplateConfig(buildID=parent),
        startCommand=START_CMD if start else "", readyCommand=READY_CMD if start else "",
    )  # fmt: skip
    stamps: list[tuple[float, str, str]] = []
    began = time.monotonic()
    service.TemplateCreate(tpb.TemplateCreateRequest(template=config), timeout=60)
    while True:
        status = service.TemplateBuildStatus(
            tpb.TemplateStatusRequest(templateID=config.templateID, buildID=build_id, offset=len(stamps)),
            timeout=60,
        )
        now = time.monotonic()
        stamps += [
            (entry.timestamp.ToNanoseconds() / 1e9, entry.fields.get("step", ""), entry.message)
            for entry in status.logEntries
        ]
        if status.status == tpb.Failed:
            raise SystemExit(f"template build {build_id} failed: {status.reason.message}")
        if status.status == tpb.Completed and not status.logEntries:
            return Built(now - began, stamps)
        if now - began > BUILD_TIMEOUT_S:
            raise SystemExit(f"template build {build_id} did not finish in {BUILD_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)


def step(command: str, *, force: bool = False) -> tpb.TemplateStep:
    return tpb.TemplateStep(type="RUN", args=[command], force=force)


@dataclass(frozen=True)
class Cli:
    wall_s: float
    resumed_s: float
    paused_s: float


def resume_build(storage: Path, parent: str, root: Path) -> Cli:
    """``ember resume-build -from-build parent -cmd-pause STEP_CMD -to-build <new>``, timed."""
    command = [sys.executable, "-m", "ember", "resume-build", "-from-build", parent, "-storage", str(storage),
               "-cmd-pause", STEP_CMD, "-to-build", str(uuid.uuid4())]  # fmt: skip
    began = time.monotonic()
    done = subprocess.run(
        command, capture_output=True, text=True, env=environment(root / "cli-base"), timeout=900, check=False
    )
    wall = time.monotonic() - began
    resumed, paused = RESUMED_IN.search(done.stdout), PAUSED_IN.search(done.stdout)
    if done.returncode != 0 or resumed is None or paused is None:
        raise SystemExit(
            f"resume-build -cmd-pause failed (exit {done.returncode}):\n{done.stderr}{done.stdout}"
        )
    return Cli(wall, float(resumed.group(1)) / 1000, int(paused.group(1)) / 1000)


def step_vs_cli(daemon: Daemon, storage: Path, parent: str, runs: int, root: Path) -> None:
    steps: list[float] = []
    wholes: list[float] = []
    finalizes: list[float] = []
    clis: list[Cli] = []
    for _ in range(runs):
        time.sleep(SETTLE_S)
        built = build(daemon, parent, [step(STEP_CMD, force=True)])
        steps.append(built.at(FINALIZING) - built.at(f"RUN {STEP_CMD}"))
        finalizes.append(built.at("template build ") - built.at(FINALIZING))
        wholes.append(built.seconds)
        time.sleep(SETTLE_S)
        clis.append(resume_build(storage, parent, root))
    cli = p50([run.wall_s for run in clis])
    resumed, paused = p50([run.resumed_s for run in clis]), p50([run.paused_s for run in clis])
    print(f"1. one RUN step (16 MiB written and hashed) on the parent build, {runs} interleaved runs each")
    print(f"  resume-build -cmd-pause, wall (baseline)          p50 {cli:6.2f} s")
    print(f"    its printed 'resumed in' / 'paused in'          p50 {resumed:6.2f} s / {paused:.2f} s")
    ours = p50(steps)
    print(f"  TemplateService step (node's log stamps)          p50 {ours:6.2f} s   {ours / cli:5.2f}x")
    print(
        f"  the whole build: step + finalize (resume, pause)  p50 {p50(wholes):6.2f} s   "
        f"{p50(wholes) / cli:5.2f}x (finalize alone p50 {p50(finalizes):.2f} s)"
    )


def cached_rebuild(daemon: Daemon, parent: str, runs: int) -> None:
    firsts: list[Built] = []
    agains: list[Built] = []
    for _ in range(runs):
        nonce = uuid.uuid4().hex[:12]
        steps = [
            step(f"echo {nonce} > /root/one"),
            step(f"{STEP_CMD} > /root/two"),
            step(f'python3 -c \'import json; print(json.dumps({{"run": "{nonce}"}}))\' > /root/three'),
        ]
        time.sleep(SETTLE_S)
        firsts.append(build(daemon, parent, steps, start=True))
        time.sleep(SETTLE_S)
        agains.append(build(daemon, parent, steps, start=True))
    first = p50([built.seconds for built in firsts])
    again = p50([built.seconds for built in agains])
    print(
        f"2. a template of 3 RUN steps + start/ready command, first build then the same again, {runs} pairs"
    )
    print(f"  first build (3 layers built + finalize, baseline) p50 {first:6.2f} s   layers cached: "
          f"{', '.join(str(built.cached) for built in firsts)}")  # fmt: skip
    print(
        f"  rebuild, every step from the cache (finalize)     p50 {again:6.2f} s   {again / first:5.2f}x "
        f"({first / again:.1f}x faster)   layers cached: {', '.join(str(built.cached) for built in agains)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 step runs each, 1 first/cached pair")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_templates needs root: template builds run QEMU guests (namespaces, mounts)")
    step_runs, pairs = (2, 1) if args.quick else (5, 3)
    os.environ.setdefault("HOST_KERNELS_DIR", KERNELS)
    with tempfile.TemporaryDirectory(prefix="bench-templates-", dir="/var/tmp") as scratch:
        root = Path(scratch)
        store = root / "store"
        began = time.monotonic()
        parent = str(create(store))
        print(f"setup {time.monotonic() - began:.1f} s: parent build {parent}, 512 MiB guest; {load()}")
        with running_daemon(store, root) as daemon:
            step_vs_cli(daemon, store, parent, step_runs, root)
            cached_rebuild(daemon, parent, pairs)
        print(f"total {time.monotonic() - began:.1f} s; {load()}")


if __name__ == "__main__":
    main()

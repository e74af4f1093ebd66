"""The control plane as ``ember serve`` runs it, driven with E2B's Python SDK; each figure beside a
baseline measured in the same run.

Setup: ``ember serve`` on free loopback ports on the e2e tests' cached storage
(``<EMBER_CACHE_DIR>/e2e-serve``, locked while in use; the ``base`` template is built there
once per machine, a minute or two), started with tests/e2e/serve_harness.py. The team's
concurrency limit is raised for the run (section 4 runs 24 sandboxes; the default is 20) and
put back after. Then:

1. **Create + first command.** SDK ``Sandbox.create()`` + ``commands.run("true")`` (REST API,
   placement, records, then envd through the edge proxy) against gRPC ``Create`` straight to
   serve's node + the same ``Process/Start`` through the node proxy with ``EnvdClient`` (what
   the control plane and the edge add on top of the node), interleaved: p50 each, the ratio
   (target <= 1.2x). The API's node sync kills sandboxes it did not create (orphans) every
   20 s: a baseline run it cut short is run again, and counted.
2. **Concurrent creates.** 8 SDK ``Sandbox.create()`` at once (the node starts 3 at a time;
   the rest wait in the API's placement): p50 / p95 latency, throughput, failures.
3. **Fork vs resume.** ``sandbox.fork(count=3)`` of a running sandbox (one checkpoint, three
   resumes) against one ``Sandbox.connect`` of the same sandbox paused (one resume),
   interleaved: wall time p50 each, the ratio (target < 2x); ``create_snapshot`` of it (the
   checkpoint alone) for scale.
4. **Listing under load.** ``GET /v2/sandboxes`` with 20 sandboxes running, from 8 client
   threads on keep-alive connections (plain ``http.client`` with the API key): requests/s,
   p50 / p99; then the same while 4 threads create and kill sandboxes in a loop: p99 again.

Everything runs in one serve process tree (the API, the edge, the node: one GIL between the
first two), on a 2-core machine where other jobs often run QEMU guests too: figures are noisy;
compare each with its baseline from the same run only. The load average is printed.

    python bench/bench_api.py            # 10 runs, 3 rounds of 8, 5 forks, 20 running, 10 s loads
    python bench/bench_api.py --quick    # 3 runs, 1 round of 8, 2 forks, 10 running, 4 s loads
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime as dt
import http.client
import json
import os
import secrets
import statistics
import string
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from google.protobuf import timestamp_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
import e2b
from serve_harness import ServeProcess, cached_storage, collect_garbage, sdk_environment

from ember.api import open_store
from ember.envd import ENVD_VERSION
from ember.envd.client import EnvdClient
from ember.rpc import orchestrator_pb2 as pb
from ember.rpc import orchestrator_pb2_grpc

BENCH_LIMIT = 64  # concurrent sandboxes of the team during the run
SETTLE_S = 0.5  # between interleaved runs: the node's pools refill
LIST_THREADS = 8
CREATORS = 4


def p50(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def load() -> str:
    return "load average " + " / ".join(f"{value:.2f}" for value in os.getloadavg())


def new_sandbox_id() -> str:
    return "i" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(20))


# -- the team's limit ----------------------------------------------------------------------------


def set_limit(storage: Path, limit: int | None) -> int:
    """Set the default team's concurrency limit (None: leave it); returns the previous one."""

    async def change() -> int:
        store = await open_store(f"sqlite://{storage / 'api.sqlite3'}")
        try:
            team = await store.default_team()
            if limit is not None:
                await store.set_team_limits(team.id, limit, team.max_length_hours)
            return team.max_concurrent_sandboxes
        finally:
            await store.close()

    return asyncio.run(change())


# -- 1. create + first command ------------------------------------------------------------------


def sdk_create_and_run() -> tuple[float, float]:
    """(create + run, create alone) in seconds."""
    started = time.monotonic()
    sandbox = e2b.Sandbox.create("base", timeout=60)
    created = time.monotonic() - started
    sandbox.commands.run("true")
    elapsed = time.monotonic() - started
    sandbox.kill()
    return elapsed, created


class Node:
    """serve's node, reached as the API reaches it: gRPC Create/Delete, envd through its proxy."""

    def __init__(self, serve: ServeProcess, build_id: str) -> None:
        self.serve = serve
        self.build_id = build_id
        self.channel = grpc.insecure_channel(f"127.0.0.1:{serve.ports.grpc}")
        self.stub = orchestrator_pb2_grpc.SandboxServiceStub(self.channel)

    def create_and_run(self) -> tuple[float, float]:
        """(Create + run, Create alone) in seconds."""
        sandbox_id, token = new_sandbox_id(), secrets.token_hex(16)
        now = dt.datetime.now(dt.UTC)
        start, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
        start.FromDatetime(now)
        end.FromDatetime(now + dt.timedelta(seconds=60))
        config = pb.SandboxConfig(
            template_id="bench", build_id=self.build_id, sandbox_id=sandbox_id, envd_version=ENVD_VERSION,
            vcpu=2, ram_mb=512, total_disk_size_mb=1024, envd_access_token=token,
            execution_id=new_sandbox_id(),
        )  # fmt: skip
        started = time.monotonic()
        self.stub.Create(pb.SandboxCreateRequest(sandbox=config, start_time=start, end_time=end), timeout=120)
        created = time.monotonic() - started
        try:
            envd = EnvdClient(
                f"http://127.0.0.1:{self.serve.ports.proxy}",
                access_token=token,
                headers={"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": "49983"},
            )
            envd.run("true")
            return time.monotonic() - started, created
        finally:
            try:
                self.stub.Delete(pb.SandboxDeleteRequest(sandbox_id=sandbox_id), timeout=60)
            except grpc.RpcError as exc:  # the API's sync killed it as an orphan already
                if exc.code() is not grpc.StatusCode.NOT_FOUND:
                    raise

    def close(self) -> None:
        self.channel.close()


def create_and_first_command(node: Node, runs: int) -> None:
    sdk: list[tuple[float, float]] = []
    direct: list[tuple[float, float]] = []
    rerun = 0

    def baseline() -> None:
        nonlocal rerun
        for attempt in range(3):
            try:
                direct.append(node.create_and_run())
                return
            except Exception as exc:  # cut short by the node sync's orphan kill: run it again
                rerun += 1
                if attempt == 2:
                    raise SystemExit(f"the baseline failed 3 times: {exc}") from exc

    for run in range(runs):  # alternate which goes first, so neither always meets a busier node
        for step in (baseline, lambda: sdk.append(sdk_create_and_run()))[:: 1 if run % 2 else -1]:
            time.sleep(SETTLE_S)
            step()
    sdk_s, direct_s = [total for total, _ in sdk], [total for total, _ in direct]
    ratio = p50(sdk_s) / p50(direct_s)
    print(f"1. create + first commands.run('true'), {runs} interleaved runs each (target: SDK <= 1.2x)")
    print(
        f"  gRPC Create + envd through the node proxy (baseline)  p50 {ms(p50(direct_s))}   "
        f"p95 {ms(percentile(direct_s, 0.95))}   (Create alone p50 {ms(p50([c for _, c in direct]))}; "
        f"{rerun} runs repeated after an orphan kill)"
    )
    print(
        f"  SDK Sandbox.create + commands.run via API and edge    p50 {ms(p50(sdk_s))}   "
        f"p95 {ms(percentile(sdk_s, 0.95))}   (create alone p50 {ms(p50([c for _, c in sdk]))})   "
        f"{ratio:5.2f}x the baseline"
    )


# -- 2. concurrent creates ------------------------------------------------------------------------


def concurrent_creates(at_once: int, rounds: int) -> None:
    latencies: list[float] = []
    failures: list[str] = []
    wall = 0.0

    def one() -> tuple[float, Any]:
        started = time.monotonic()
        try:
            sandbox = e2b.Sandbox.create("base", timeout=60)
        except Exception as exc:
            return time.monotonic() - started, exc
        return time.monotonic() - started, sandbox

    for _ in range(rounds):
        time.sleep(SETTLE_S * 2)
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(at_once) as pool:
            results = list(pool.map(lambda _: one(), range(at_once)))
        wall += time.monotonic() - started
        for seconds, outcome in results:
            if isinstance(outcome, Exception):
                failures.append(f"{type(outcome).__name__}: {outcome}")
            else:
                latencies.append(seconds)
                outcome.kill()
    print(f"2. {at_once} SDK creates at once, {rounds} rounds")
    print(
        f"  latency p50 {ms(p50(latencies))}   p95 {ms(percentile(latencies, 0.95))}   "
        f"throughput {len(latencies) / wall:5.2f} sandboxes/s   failures {len(failures)}"
    )
    for failure in failures[:5]:
        print(f"    {failure[:160]}")


# -- 3. fork vs resume ----------------------------------------------------------------------------


def fork_vs_resume(runs: int) -> None:
    fork_s: list[float] = []
    resume_s: list[float] = []
    checkpoint_s: list[float] = []
    for _ in range(runs):
        parent = e2b.Sandbox.create("base", timeout=120)
        parent.commands.run("true")
        time.sleep(SETTLE_S)
        started = time.monotonic()
        snapshot = parent.create_snapshot()  # the checkpoint a fork takes first, alone
        checkpoint_s.append(time.monotonic() - started)
        e2b.Sandbox.delete_snapshot(snapshot.snapshot_id)
        time.sleep(SETTLE_S)
        started = time.monotonic()
        forks = parent.fork(count=3, timeout=60)
        fork_s.append(time.monotonic() - started)
        for fork in forks:
            if not isinstance(fork, e2b.Sandbox):
                raise SystemExit(f"a fork failed: {fork}")
            fork.kill()
        parent.pause()
        time.sleep(SETTLE_S)
        started = time.monotonic()
        resumed = e2b.Sandbox.connect(parent.sandbox_id, timeout=60)
        resume_s.append(time.monotonic() - started)
        resumed.kill()
    ratio = p50(fork_s) / p50(resume_s)
    print(f"3. fork(count=3) vs one connect() resume of the paused sandbox, {runs} runs each (target < 2x)")
    print(f"  Sandbox.connect of a paused sandbox (baseline)  p50 {ms(p50(resume_s))}")
    print(f"  for scale: create_snapshot (the checkpoint)     p50 {ms(p50(checkpoint_s))}")
    print(
        f"  sandbox.fork(count=3)                          p50 {ms(p50(fork_s))}   {ratio:5.2f}x the baseline"
    )


# -- 4. listing under load -------------------------------------------------------------------------


def list_load(
    env: dict[str, str], seconds: float, background: Callable[[threading.Event], None] | None
) -> tuple[int, float, list[float], int]:
    """LIST_THREADS clients on keep-alive connections for ``seconds``: (requests, wall, latencies, errors)."""
    url = urlsplit(env["E2B_API_URL"])
    headers = {"X-API-Key": env["E2B_API_KEY"]}
    stop = threading.Event()
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
        mine: list[float] = []
        failed = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                connection.request("GET", "/v2/sandboxes?limit=100", headers=headers)
                answer = connection.getresponse()
                answer.read()
                if answer.status != 200:
                    failed += 1
            except (OSError, http.client.HTTPException):
                failed += 1
                connection.close()
                connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
            mine.append(time.monotonic() - started)
        connection.close()
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=client) for _ in range(LIST_THREADS)]
    helpers = (
        [threading.Thread(target=background, args=(stop,)) for _ in range(CREATORS)] if background else []
    )
    for thread in helpers:
        thread.start()
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    for thread in helpers:
        thread.join()
    return len(latencies), wall, latencies, errors[0]


def listing(env: dict[str, str], running: int, seconds: float) -> None:
    with concurrent.futures.ThreadPoolExecutor(3) as pool:  # the node starts 3 at a time
        sandboxes = list(pool.map(lambda _: e2b.Sandbox.create("base", timeout=300), range(running)))
    created = [0]
    failed: list[str] = []

    def creator(stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                sandbox = e2b.Sandbox.create("base", timeout=60)
                created[0] += 1
                sandbox.kill()
            except Exception as exc:
                failed.append(f"{type(exc).__name__}: {exc}")

    try:
        count, wall, latencies, errors = list_load(env, seconds, None)
        print(f"4. GET /v2/sandboxes, {running} running, {LIST_THREADS} threads, keep-alive, {seconds:.0f} s")
        print(
            f"  idle node                  {count / wall:7.1f} requests/s   p50 {ms(p50(latencies))}   "
            f"p99 {ms(percentile(latencies, 0.99))}   errors {errors}"
        )
        count, wall, latencies, errors = list_load(env, seconds, creator)
        print(
            f"  {CREATORS} create+kill loops     {count / wall:7.1f} requests/s   p50 {ms(p50(latencies))}   "
            f"p99 {ms(percentile(latencies, 0.99))}   errors {errors}   ({created[0]} creates, "
            f"{len(failed)} failed)"
        )
        for failure in failed[:3]:
            print(f"    {failure[:160]}")
    finally:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda sandbox: sandbox.kill(), sandboxes))


def base_build(serve: ServeProcess) -> str:
    url = urlsplit(serve.env["E2B_API_URL"])
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        connection.request("GET", "/templates/base", headers={"X-API-Key": serve.env["E2B_API_KEY"]})
        answer = connection.getresponse()
        return str(json.loads(answer.read())["buildID"])
    finally:
        connection.close()


# -- main --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer runs, fewer sandboxes (seconds, not minutes)"
    )
    options = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_api needs root: ember serve runs sandboxes (network namespaces, mounts)")
    runs, rounds, forks, running, seconds = (3, 1, 2, 10, 4.0) if options.quick else (10, 3, 5, 20, 10.0)
    logs = Path(tempfile.mkdtemp(prefix="ember-bench-api-"))
    with cached_storage(logs / "storage") as (storage, cached):
        if not cached:
            print(f"the cached storage is in use: building the base template in {storage} first")
        if not (storage / "api.sqlite3").exists():  # a first start builds the base template
            first = ServeProcess(storage, logs / "serve-first.log")
            first.start()
            first.stop()
        previous = set_limit(storage, BENCH_LIMIT)
        serve = ServeProcess(storage, logs / "serve.log")
        print(f"ember serve on {storage} (log {serve.log}); {load()}")
        serve.start()
        try:
            with sdk_environment(serve.env):
                node = Node(serve, base_build(serve))
                try:
                    create_and_first_command(node, runs)
                finally:
                    node.close()
                concurrent_creates(8, rounds)
                fork_vs_resume(forks)
                listing(serve.env, running, seconds)
        finally:
            code = serve.stop()
            set_limit(storage, previous)
            if cached and code == 0:
                collect_garbage(storage, logs)
        print(f"ember serve exited with {code}; leftovers: {serve.leftovers() or 'none'}; {load()}")


if __name__ == "__main__":
    main()

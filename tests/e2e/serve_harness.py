"""``ember serve`` as the end-to-end tests run it: a subprocess on free loopback ports.

``ServeProcess`` starts ``python -m ember serve``, reads the four ``E2B_*`` lines it prints on
stdout (its log goes to a file), and stops it with SIGTERM. What a stop must leave behind is
checked by the caller with ``leftovers()``: no QEMU started from its sandbox workspaces, no
workspace. ``Postgres`` is a throwaway PostgreSQL cluster (Debian's ``postgresql`` package)
for the test that runs ``serve -db postgresql://...``. ``Sandboxes`` are one test's sandboxes,
made and killed through E2B's SDK. Nothing here imports pytest, so the benchmark
(bench/bench_api.py) reuses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import IO, Any

import e2b
import grpc

from ember.guest import cache_dir
from ember.network import SlotConfig
from ember.rpc import orchestrator_pb2_grpc

ENV_NAMES = ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY", "E2B_DOMAIN")
# The first start on a machine builds the base template (a minute or two; more under load).
START_TIMEOUT_S = 900.0
STOP_TIMEOUT_S = 120.0
SANDBOX_TIMEOUT_S = 120  # a sandbox a test leaks ends on its own soon
STORAGE_NAME = "e2e-serve"
STORAGE_VARIABLE = "EMBER_E2E_SERVE_STORAGE"  # another place for the cached storage
# How a stopped serve tells it could not open a port (ember.api.server, the daemon): retry elsewhere.
PORT_TAKEN_HINTS = ("cannot listen", "port is taken", "Address already in use")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class ServePorts:
    api: int
    edge: int
    grpc: int
    proxy: int
    internal_grpc: int

    @classmethod
    def pick(cls) -> ServePorts:
        while True:
            ports = [free_port() for _ in range(5)]
            if len(set(ports)) == 5:
                return cls(*ports)

    def flags(self) -> list[str]:
        return [
            "-api-port", str(self.api), "-edge-port", str(self.edge), "-grpc-port", str(self.grpc),
            "-proxy-port", str(self.proxy), "-internal-grpc-port", str(self.internal_grpc),
        ]  # fmt: skip

    def all(self) -> dict[str, int]:
        return {
            "api": self.api,
            "edge": self.edge,
            "grpc": self.grpc,
            "proxy": self.proxy,
            "internal_grpc": self.internal_grpc,
        }


class ServeFailed(Exception):
    """serve exited, or printed no environment in time; the message ends with its log."""


@dataclass
class ServeProcess:
    """One ``ember serve``: ``start()``, use ``env`` / ``ports``, ``stop()`` (returns the exit code).

    ``orchestrator_base`` (ORCHESTRATOR_BASE_PATH) defaults to ``<storage>/orchestrator`` as in
    serve; a second serve sharing a storage gets its own, so its sandboxes are told apart.
    """

    storage: Path
    log: Path
    db_url: str | None = None
    ports: ServePorts = field(default_factory=ServePorts.pick)
    orchestrator_base: Path | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    _reader: threading.Thread | None = None

    @property
    def workspace_root(self) -> Path:
        return (self.orchestrator_base or self.storage / "orchestrator") / "sandbox"

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "ember", "serve", "-storage", str(self.storage), *self.ports.flags()]
        return [*argv, "-db", self.db_url] if self.db_url else argv

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        environ = {name: value for name, value in os.environ.items() if not name.startswith("E2B_")}
        environ.update(self.extra_env)
        if self.orchestrator_base is not None:
            environ["ORCHESTRATOR_BASE_PATH"] = str(self.orchestrator_base)
        self.env = {}
        self._lines = queue.Queue()
        with self.log.open("a") as handle:
            handle.write(f"== {' '.join(self.command())}\n")
            handle.flush()
            self.process = subprocess.Popen(
                self.command(), stdout=subprocess.PIPE, stderr=handle, text=True, env=environ
            )
        stdout = self.process.stdout
        assert stdout is not None
        self._reader = threading.Thread(target=self._read, args=(stdout,), daemon=True, name="serve-stdout")
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        while len(self.env) < len(ENV_NAMES):
            try:
                line = self._lines.get(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() > deadline:
                    self.kill()
                    raise ServeFailed(f"no environment after {timeout_s:.0f} s\n{self.log_tail()}") from None
                continue
            if line is None:
                code = self.process.wait()
                self._release()
                raise ServeFailed(f"serve exited with {code} before its environment\n{self.log_tail()}")
            name, sep, value = line.strip().partition("=")
            if sep and name in ENV_NAMES:
                self.env[name] = value

    def _read(self, stdout: IO[str]) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in stdout:
                self._lines.put(line)
        self._lines.put(None)

    def _release(self) -> None:
        """Close the stdout pipe of an exited serve, once its reader saw the end (never under it)."""
        process, reader = self.process, self._reader
        if process is None or process.stdout is None or process.stdout.closed:
            return
        if reader is not None:
            reader.join(5)
            if reader.is_alive():
                return  # a child still holds the pipe open: the daemon thread keeps it
        process.stdout.close()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then the exit code (SIGKILL after ``timeout_s``: -9)."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return process.wait()
        finally:
            self._release()

    def restart(self, timeout_s: float = START_TIMEOUT_S) -> tuple[int, list[str]]:
        """Stop, then start on the same storage and ports: the stop's exit code and leftovers."""
        code = self.stop()
        left = self.leftovers()
        self.start(timeout_s)
        return code, left

    def kill(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._release()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def leftovers(self) -> list[str]:
        """What a stopped serve must not leave: QEMUs of its sandboxes, sandbox workspaces."""
        marker = f"{self.workspace_root}/"
        found = [f"QEMU pid {pid}: {cmd[:200]}" for pid, cmd in qemu_processes() if marker in cmd]
        if self.workspace_root.is_dir():
            found += [f"workspace {entry}" for entry in sorted(self.workspace_root.iterdir())]
        return found

    @contextlib.contextmanager
    def node(self) -> Iterator[orchestrator_pb2_grpc.SandboxServiceStub]:
        """The orchestrator's SandboxService, over gRPC to the serve's node port."""
        with grpc.insecure_channel(f"127.0.0.1:{self.ports.grpc}") as channel:
            yield orchestrator_pb2_grpc.SandboxServiceStub(channel)


@contextlib.contextmanager
def cached_storage(fallback: Path) -> Iterator[tuple[Path, bool]]:
    """The machine's cached serve storage, locked while in use; ``(fallback, False)`` if it is busy.

    ``<EMBER_CACHE_DIR>/e2e-serve`` (default /var/cache/ember/e2e-serve), or
    ``EMBER_E2E_SERVE_STORAGE``; the lock is the file ``<storage>.lock`` beside it.
    """
    storage = Path(os.environ.get(STORAGE_VARIABLE) or cache_dir() / STORAGE_NAME)
    storage.parent.mkdir(parents=True, exist_ok=True)
    with storage.with_name(storage.name + ".lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"e2e: {storage} is in use by another session: {fallback}", file=sys.stderr)
            yield fallback, False
            return
        yield storage, True


def collect_garbage(storage: Path, logs: Path) -> None:
    """Delete the builds nothing in serve's database reads from (a stopped serve's storage only)."""
    database = storage / "api.sqlite3"
    if not database.is_file():
        return
    with (logs / "gc.log").open("a") as log:
        subprocess.run(
            [sys.executable, "-m", "ember", "gc", "-storage", str(storage), "-db", f"sqlite://{database}",
             "-grace", "0s", "-dry-run=false"],
            stdout=log, stderr=log, check=False, timeout=300,
        )  # fmt: skip


@contextlib.contextmanager
def sdk_environment(env: dict[str, str]) -> Iterator[None]:
    """``env`` in os.environ for the block (the SDK reads it on every call), then restored."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def qemu_processes() -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        argv = raw.split(b"\0")
        if argv and argv[0].endswith(b"qemu-system-x86_64"):
            found.append((int(entry), raw.replace(b"\0", b" ").decode(errors="replace")))
    return found


def sandbox_host_ip(sandbox_id: str) -> IPv4Address:
    """The host-side address of a running sandbox: its QEMU's network namespace is ``ns-<slot>``.

    Neither the REST API nor the node's gRPC List says where a sandbox is reached on the host;
    the slot of its QEMU (named ``sandbox-<id>``) does, through ember.network's addressing.
    """
    for pid, cmd in qemu_processes():
        if f"-name sandbox-{sandbox_id} " in cmd:
            namespace = subprocess.run(
                ["ip", "netns", "identify", str(pid)], capture_output=True, text=True, check=True
            ).stdout.strip()
            assert namespace.startswith("ns-"), f"QEMU {pid} of {sandbox_id} is in namespace {namespace!r}"
            return SlotConfig.from_env().slot(int(namespace.removeprefix("ns-"))).host_ip
    raise LookupError(f"no QEMU runs sandbox {sandbox_id}")


def host_ipv4_addresses() -> list[str]:
    """Every IPv4 address of the host's own namespace (loopback, uplink, each slot's veth)."""
    shown = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True)
    return sorted({line.split()[3].split("/")[0] for line in shown.stdout.splitlines()})


class Sandboxes:
    """Sandboxes of one test: tagged ``e2e=<tag>`` in their metadata, all killed at the end."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.ids: list[str] = []

    def create(self, metadata: dict[str, str] | None = None, template: str = "base", **options: Any) -> Any:
        options.setdefault("timeout", SANDBOX_TIMEOUT_S)
        sandbox = e2b.Sandbox.create(template, metadata={"e2e": self.tag, **(metadata or {})}, **options)
        self.ids.append(sandbox.sandbox_id)
        return sandbox

    def listed(self, **query: Any) -> dict[str, str]:
        """``{id: state}`` of this test's sandboxes, from ``Sandbox.list`` (every page)."""
        metadata = {"e2e": self.tag, **query.pop("metadata", {})}
        paginator = e2b.Sandbox.list(query=e2b.SandboxQuery(metadata=metadata, **query), limit=100)
        found: dict[str, str] = {}
        while paginator.has_next:
            for info in paginator.next_items():
                found[info.sandbox_id] = str(info.state.value)
        return found

    def cleanup(self) -> None:
        for sandbox_id in {*self.ids, *self.listed()}:
            with contextlib.suppress(Exception):
                e2b.Sandbox.kill(sandbox_id)


class Postgres:
    """A throwaway PostgreSQL cluster on a free loopback port (run as ``nobody`` when we are root)."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        if not found:
            raise FileNotFoundError("PostgreSQL is not installed: apt-get install postgresql")
        self.bin = Path(found[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="ember-e2e-pg-"))
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # postgres will not run as root
            shutil.chown(self.root, "nobody")
            self.prefix = ["runuser", "-u", "nobody", "--"]
        data = str(self.root / "data")
        self._tool("initdb", "-D", data, "-A", "trust", "-U", "ember", "-E", "UTF8", "--no-sync")
        settings = f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._tool("pg_ctl", "-D", data, "-o", settings, "-l", str(self.root / "log"), "-w", "start")

    def _tool(self, name: str, *args: str) -> None:
        argv = [*self.prefix, str(self.bin / name), *args]
        subprocess.run(argv, check=True, capture_output=True, cwd=self.root)

    def url(self, database: str) -> str:
        return f"postgresql://ember@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._tool("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

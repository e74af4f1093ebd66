"""The sandbox process: one process per sandbox, holding its guest's servers and its VMM.

Why a process per sandbox, and not threads of one:

* a guest's memory is served by a FUSE file system, and a process that is killed while one
  of its threads waits on its *own* FUSE server can never exit (the kernel waits for the
  reply uninterruptibly); nor can the QEMU mapping that file. Here the owner (the CLI or the
  daemon) never touches a guest's memory file, so its death only ends the sandbox
  processes, whose FUSE connections then close and release every waiter;
* one sandbox's failure (a crash, a storage error, a stuck VMM) is that process's alone;
* page serving of many sandboxes does not share one GIL;
* the VMM is started from the process's main thread, which lives exactly as long as the
  sandbox (``ember.vmm.process``: the spawning rule).

The processes are forked from a *fork server* (``multiprocessing``'s forkserver) that
imported this module before any thread existed: a fork costs ~20 ms and shares the
imported code's memory copy-on-write. The owner keeps ``idle`` processes ready, so a
resume never waits for one. Each one::

    setsid, SIGINT ignored      a Ctrl+C reaches the owner, which ends the sandbox in order
    PR_SET_PDEATHSIG SIGKILL    dies when the fork server does, i.e. when the owner dies
    SIGTERM                     ends the sandbox in order (VM, servers), then the process
    opens the node's storage    then answers requests until its sandbox is paused or killed

Protocol on the pipe (pickled tuples): the owner sends ``(method, args)``; the process
answers with any number of ``("event", SandboxEvent)`` and then ``("ok", value)`` or
``("error", module, class, message)``. Between requests it watches its VMM: if the VMM
exits, it tears the guest down, sends ``("gone", reason)`` and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import signal
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ember.environment import Environment
from ember.errors import EmberError
from ember.sandbox.errors import SandboxError, SandboxGone
from ember.sandbox.records import EventSink
from ember.sandbox.resume import open_read_storage
from ember.sandbox.runtime import SandboxRuntime
from ember.vmm.qemu import qemu_version

_log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_M_ARENA_MAX = -8
START_TIMEOUT_S = 60.0
TERMINATE_TIMEOUT_S = 20.0
_CONTEXT_LOCK = threading.Lock()
_CONTEXT: Any = None
_MAIN_LOCK = threading.Lock()


@dataclass(frozen=True)
class WorkerSetup:
    """What every sandbox process of a node opens first."""

    storage_url: str
    env: Environment
    log_level: int = logging.WARNING


class _Terminated(BaseException):
    """SIGTERM in the sandbox process: unwinds whatever runs, so its cleanups run."""


_SIGTERM_OWNER = 0


def _on_sigterm(signum: int, frame: object) -> None:
    if os.getpid() != _SIGTERM_OWNER:  # a helper forked from this process (pyroute2's): just end
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise _Terminated


def become_child_of_node(log_level: int) -> None:
    """What every process the node forks does first (see the module docstring)."""
    global _SIGTERM_OWNER
    # Every object inherited from the fork server goes to the collector's permanent generation:
    # a collection writes into each object it scans, which would copy every page of them.
    gc.freeze()
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _SIGTERM_OWNER = os.getpid()
    signal.signal(signal.SIGTERM, _on_sigterm)
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getppid()
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the fork server died before the signal was armed
        os._exit(1)
    _let_the_fork_server_go()
    logging.basicConfig(
        level=log_level,
        stream=sys.stderr,
        format=f"%(asctime)s ember[{os.getpid()}] %(name)s: %(message)s",
    )


def _let_the_fork_server_go() -> None:
    """Close this process's copy of the owner's fork-server "alive" pipe.

    multiprocessing hands every forked child the write end of that pipe, and the fork server
    exits only once no one holds it. A child that never reads its own pipe again (stuck in
    a request) would keep the fork server alive after the owner died, and the fork server
    its PDEATHSIG from firing: both would outlive the owner for good. This process never
    asks the fork server for children, so it does not need the pipe.
    """
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(alive, int):
        with contextlib.suppress(OSError):
            os.close(alive)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]


def _warm_up() -> None:
    """Pay per-process costs now, while the process waits in the pool, not during a resume."""
    with contextlib.suppress(EmberError):  # a host without QEMU still resumes Firecracker builds
        qemu_version()


def _serve(conn: Connection, setup: WorkerSetup) -> None:
    """The sandbox process's main loop (see the module docstring)."""
    become_child_of_node(setup.log_level)
    # One malloc arena for the process's few threads: each extra arena keeps its own free pages.
    ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1)
    runtime: SandboxRuntime | None = None
    try:
        storage = open_read_storage(setup.storage_url, setup.env)
        runtime = SandboxRuntime(storage, setup.env, lambda event: conn.send(("event", event)))
        _warm_up()
        conn.send(("ok", os.getpid()))
        _answer(conn, runtime)
    except EmberError as exc:
        _send_error(conn, exc)
    except (_Terminated, EOFError, ConnectionError):  # the owner went away (a reset pipe too)
        pass
    finally:
        if runtime is not None:
            try:
                runtime.kill()
            except BaseException:
                _log.exception("tearing the sandbox down failed")
    os._exit(0)


def _answer(conn: Connection, runtime: SandboxRuntime) -> None:
    handlers: dict[str, Callable[..., Any]] = {
        "resume": runtime.resume,
        "boot": runtime.boot,
        "pause": runtime.pause,
        "checkpoint": runtime.checkpoint,
        "check": runtime.check,
        "usage": runtime.usage,
        "accesses": runtime.accesses,
        "kill": runtime.kill,
    }
    while True:
        pid = runtime.vm_pid()
        watched: list[Any] = [conn]
        vm_fd = _pidfd(pid) if pid is not None else None
        if vm_fd is not None:
            watched.append(vm_fd)
        try:
            ready = multiprocessing.connection.wait(watched)
        finally:
            if vm_fd is not None:
                os.close(vm_fd)
        if conn not in ready:
            reason = runtime.exit_reason()
            runtime.kill()
            conn.send(("gone", reason))
            return
        method, args = conn.recv()
        handler = handlers.get(method)
        if handler is None:
            _send_error(conn, SandboxError(f"the sandbox process has no method {method!r}"))
            continue
        try:
            answer = handler(*args)
            if method in ("resume", "boot"):
                _give_back_free_memory()
            conn.send(("ok", answer))
        except EmberError as exc:
            _send_error(conn, exc)
        except Exception as exc:  # a bug: the owner gets one line, the traceback goes to the log
            _log.error("sandbox process failed in %s:\n%s", method, traceback.format_exc())
            _send_error(
                conn, SandboxError(f"internal error in the sandbox process: {type(exc).__name__}: {exc}")
            )
        if method in ("pause", "kill") or (method == "checkpoint" and runtime.vm_pid() is None):
            return


def _give_back_free_memory() -> None:
    """Return the heap a start freed (its buffers, its parsed headers) to the kernel.

    A sandbox process lives as long as its sandbox; without this, what the start used stays
    resident in glibc's free lists, and that is most of what a running sandbox costs the node.
    """
    ctypes.CDLL(None).malloc_trim(0)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _send_error(conn: Connection, exc: EmberError) -> None:
    conn.send(("error", type(exc).__module__, type(exc).__qualname__, str(exc)))


def rebuild_error(module: str, name: str, message: str) -> EmberError:
    """The sandbox process's error as the same ember class, carrying its message."""
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, EmberError)):
        return SandboxError(message)
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Start a process without making it import the owner's ``__main__``.

    multiprocessing runs the parent's main module again in every child it starts (by path
    for a script), so a script that makes a ``Node`` at top level would make another in every
    sandbox process. Sandbox processes need nothing from ``__main__``: while one is started,
    ``__main__`` is a bare module that names no file.
    """
    with _MAIN_LOCK:
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            sys.modules["__main__"] = main


def start_process(process: Any) -> None:
    """``process.start()`` for the node's processes (sandbox processes, the slot keeper)."""
    with _main_hidden():
        process.start()


def fork_context() -> Any:
    """The fork server context, set up once per owner process with the node's modules preloaded."""
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__, "ember.sandbox.slots"])
            _CONTEXT = context
        return _CONTEXT


class WorkerClient:
    """One sandbox process, seen from its owner; calls are serialized (one at a time)."""

    def __init__(self, process: Any, conn: Connection) -> None:
        self.process = process
        self._conn = conn
        self._lock = threading.Lock()
        self._gone: str | None = None

    @classmethod
    def start(cls, setup: WorkerSetup) -> WorkerClient:
        context = fork_context()
        ours, theirs = context.Pipe()
        process = context.Process(target=_serve, args=(theirs, setup), name="ember-sandbox", daemon=True)
        start_process(process)
        theirs.close()
        client = cls(process, ours)
        client._receive(None, START_TIMEOUT_S, "start")
        return client

    @property
    def pid(self) -> int:
        pid: int = self.process.pid
        return pid

    @property
    def sentinel(self) -> int:
        sentinel: int = self.process.sentinel
        return sentinel

    @property
    def alive(self) -> bool:
        return bool(self.process.is_alive())

    def call(
        self, method: str, *args: Any, on_event: EventSink | None = None, timeout_s: float | None = None
    ) -> Any:
        """Run ``method`` in the sandbox process; its value, or its error re-raised here.

        ``SandboxGone`` when the process exits instead of answering (its VMM died, it was
        killed): the reason it gave, if any.
        """
        with self._lock:
            if self._gone is not None:
                raise SandboxGone(self._gone)
            try:
                self._conn.send((method, args))
            except OSError as exc:
                raise self._lost(f"the sandbox process is gone ({exc})") from exc
            return self._receive(on_event, timeout_s, method)

    def _receive(self, on_event: EventSink | None, timeout_s: float | None, method: str) -> Any:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                if not self._conn.poll(remaining):
                    # Its late answer would be read as the next call's: the channel is done.
                    raise self._lost(f"the sandbox process did not finish {method} within {timeout_s:.0f} s")
                message = self._conn.recv()
            except (EOFError, OSError) as exc:
                raise self._lost(f"the sandbox process exited during {method}") from exc
            kind = message[0]
            if kind == "event":
                if on_event is not None:
                    on_event(message[1])
            elif kind == "ok":
                return message[1]
            elif kind == "error":
                raise rebuild_error(*message[1:])
            elif kind == "gone":
                raise self._lost(message[1])

    def _lost(self, reason: str) -> SandboxGone:
        self._gone = self._gone or reason
        return SandboxGone(self._gone)

    def exit_reason(self) -> str:
        """Why the process ended: the reason it sent, if it sent one before exiting."""
        if self._gone is None and self._lock.acquire(blocking=False):
            try:
                while self._conn.poll(0):
                    message = self._conn.recv()
                    if message[0] == "gone":
                        self._gone = message[1]
            except (EOFError, OSError):
                pass
            finally:
                self._lock.release()
        return self._gone or f"the sandbox process exited (status {self.process.exitcode})"

    def terminate(self, timeout_s: float = TERMINATE_TIMEOUT_S) -> None:
        """End the process: SIGTERM (it stops its VM and servers), SIGKILL after ``timeout_s``."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout_s)
            if self.process.is_alive():
                _log.warning("sandbox process %d did not stop within %.0f s: killing it", self.pid, timeout_s)
                self.process.kill()
                self.process.join(timeout_s)
        self.process.join(0)
        self._conn.close()


class WorkerPool:
    """Keeps ``idle`` sandbox processes ready; ``take`` hands one out and starts its replacement."""

    def __init__(self, setup: WorkerSetup, idle: int = 1) -> None:
        self.setup = setup
        self.idle = idle
        self._ready: list[WorkerClient] = []
        self._lock = threading.Condition()
        self._closed = False
        self._failure: EmberError | None = None
        self._filler = threading.Thread(target=self._fill, name="sandbox-processes", daemon=True)
        if idle > 0:
            self._filler.start()

    def _fill(self) -> None:
        while True:
            with self._lock:
                while not self._closed and len(self._ready) >= self.idle:
                    self._lock.wait()
                if self._closed:
                    return
            try:
                worker = WorkerClient.start(self.setup)
            except EmberError as exc:
                with self._lock:
                    self._failure = exc
                    self._lock.notify_all()
                time.sleep(1.0)
                continue
            with self._lock:
                if self._closed:
                    worker.terminate()
                    return
                self._failure = None
                self._ready.append(worker)
                self._lock.notify_all()

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until a process is ready (a CLI warms up before it measures a resume)."""
        with self._lock:
            self._lock.wait_for(lambda: self._ready or self._failure is not None or self.idle == 0, timeout_s)
            if not self._ready and self._failure is not None:
                raise self._failure

    def take(self) -> WorkerClient:
        with self._lock:
            while self._ready:
                worker = self._ready.pop(0)
                self._lock.notify_all()
                if worker.alive:
                    return worker
        return WorkerClient.start(self.setup)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, []
            self._lock.notify_all()
        for worker in ready:
            worker.terminate()
        # A process still being started is the filler's: it ends it on seeing the pool closed.
        # Not waiting would let the owner exit with that process's pipe half read.
        if self._filler.is_alive():
            self._filler.join(START_TIMEOUT_S + TERMINATE_TIMEOUT_S)

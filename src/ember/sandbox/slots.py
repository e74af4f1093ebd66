"""Network slots, made and removed by a keeper process of the node's own.

Why not in the owner's process: creating a slot forks (pyroute2 runs each request inside a
namespace in a forked helper, which then runs Python), and forking a process that runs other
threads (gRPC's, the proxy's, the monitor) copies locks those threads may hold; the child can
hang on one forever. The keeper is forked from the fork server (``worker.fork_context``), which
runs no threads of its own, and the keeper runs none either: it serves one request at a time
and makes its ``warm`` slots ahead while no request waits, so every helper forks from a
process with a single thread. A slot takes 30-70 ms to make or remove, so a burst of starts
queues for little longer than that each, and the warm slots absorb the first of them.

The keeper owns the ``SlotPool`` (its owner records name the keeper, which dies with the
node, so a killed node's slots are reclaimed by the next one). Requests carry an id, and the
owner's reader thread hands each answer to the call that waits for it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ember.errors import EmberError
from ember.network import EgressPolicy, Slot, SlotConfig, SlotPool, update_egress
from ember.network.egress import DEFAULT_EGRESS
from ember.sandbox.errors import SandboxError, SandboxGone
from ember.sandbox.worker import become_child_of_node, fork_context, rebuild_error, start_process

_log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
WARM_RETRY_S = 5.0
"""After a warm slot could not be made, how long the keeper waits before trying again."""


class _Keeper:
    """Inside the keeper process: the pool, the warm slots, one request at a time."""

    def __init__(self, conn: Connection, config: SlotConfig | None, owners_dir: Path, warm: int) -> None:
        self.conn = conn
        self.pool = SlotPool(config, owners_dir)
        self.reclaimed = self.pool.reclaimed
        self.warm = warm
        self.ready: list[Slot] = []
        self._warm_again_at = 0.0

    def serve(self) -> None:
        """Answer requests until ``close``; between them, top up the warm slots."""
        while True:
            wants_warm = len(self.ready) < self.warm
            if wants_warm and not self.conn.poll(max(0.0, self._warm_again_at - time.monotonic())):
                self._make_warm_slot()
                continue
            request_id, method, args = self.conn.recv()
            if method == "close":
                return
            self.conn.send((request_id, *self._answer(method, args)))

    def _make_warm_slot(self) -> None:
        try:
            self.ready.append(self.pool.acquire())
        except EmberError as exc:  # warming is an optimization: a start then makes its own slot
            _log.warning("cannot create a network slot ahead of time: %s", exc)
            self._warm_again_at = time.monotonic() + WARM_RETRY_S

    def acquire(self, egress: EgressPolicy) -> Slot:
        if not self.ready:
            return self.pool.acquire(egress=egress)
        slot = self.ready.pop(0)
        if egress != DEFAULT_EGRESS:
            try:
                update_egress(slot, egress)
            except BaseException:
                self.pool.release(slot)
                raise
        return slot

    def _answer(self, method: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
        handlers: dict[str, Callable[..., Any]] = {
            "acquire": self.acquire,
            "release": self.pool.release,
            "update_egress": update_egress,
            "retry_failed_releases": self.pool.retry_failed_releases,
        }
        try:
            return ("ok", handlers[method](*args))
        except EmberError as exc:
            return ("error", type(exc).__module__, type(exc).__qualname__, str(exc))
        except Exception as exc:  # a bug: the owner gets one line, the traceback goes to the log
            _log.exception("slot keeper failed in %s", method)
            return (
                "error",
                SandboxError.__module__,
                SandboxError.__qualname__,
                f"{type(exc).__name__}: {exc}",
            )

    def close(self) -> None:
        ready, self.ready = self.ready, []
        for slot in ready:
            self.pool.release(slot)
        self.pool.close()


def _keep(conn: Connection, config: SlotConfig | None, owners_dir: Path, warm: int, log_level: int) -> None:
    become_child_of_node(log_level)
    keeper: _Keeper | None = None
    try:
        keeper = _Keeper(conn, config, owners_dir, warm)
        conn.send((0, "ok", keeper.reclaimed))
        keeper.serve()
    except EmberError as exc:
        conn.send((0, "error", type(exc).__module__, type(exc).__qualname__, str(exc)))
    except (EOFError, OSError):
        pass
    finally:
        if keeper is not None:
            keeper.close()
        conn.close()


class SlotKeeper:
    """The owner's handle on the keeper process; thread-safe, calls may overlap."""

    def __init__(
        self, config: SlotConfig | None, owners_dir: Path, warm: int = 0, log_level: int = logging.WARNING
    ) -> None:
        context = fork_context()
        self._conn, theirs = context.Pipe()
        self._process = context.Process(
            target=_keep, args=(theirs, config, owners_dir, warm, log_level), name="ember-slots", daemon=True
        )
        start_process(self._process)
        theirs.close()
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        if not self._conn.poll(START_TIMEOUT_S):
            raise SandboxError("the network slot keeper did not start within 60 s")
        first = self._conn.recv()
        if first[1] == "error":
            self._process.join(5)
            raise rebuild_error(*first[2:])
        self.reclaimed: list[int] = first[2]
        """Slots of dead owners the keeper removed when it started."""
        self._reader = threading.Thread(target=self._read, name="slot-keeper", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                request_id, kind, *rest = self._conn.recv()
                with self._lock:
                    future = self._pending.pop(request_id, None)
                if future is None:
                    continue
                if kind == "ok":
                    future.set_result(rest[0])
                else:
                    future.set_exception(rebuild_error(*rest))
        except (EOFError, OSError):
            with self._lock:
                pending, self._pending = self._pending, {}
            for future in pending.values():
                future.set_exception(SandboxGone("the network slot keeper exited"))

    def _call(self, method: str, *args: Any) -> Any:
        future: Future[Any] = Future()
        request_id = next(self._ids)
        with self._lock:
            self._pending[request_id] = future
        try:
            with self._send_lock:
                self._conn.send((request_id, method, args))
        except OSError as exc:
            with self._lock:
                self._pending.pop(request_id, None)
            raise SandboxGone(f"the network slot keeper is gone ({exc})") from exc
        return future.result()

    @property
    def pid(self) -> int:
        """The keeper process (its owner records name it)."""
        pid: int = self._process.pid  # set: the process was started in __init__
        return pid

    def acquire(self, egress: EgressPolicy = DEFAULT_EGRESS) -> Slot:
        slot: Slot = self._call("acquire", egress)
        return slot

    def release(self, slot: Slot) -> None:
        self._call("release", slot)

    def update_egress(self, slot: Slot, egress: EgressPolicy) -> None:
        self._call("update_egress", slot, egress)

    def close(self) -> None:
        """Release every slot the keeper holds and end it."""
        try:
            with self._send_lock:
                self._conn.send((0, "close", ()))
        except OSError:
            pass
        self._process.join(60)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._reader.join(5)
        self._conn.close()

"""A host's sandbox machinery, shared by every sandbox it runs: the CLI holds one per command, the
daemon one for its life.

A ``Node`` owns, for one storage location:

* the storage as sandboxes read it (``open_read_storage``: remote stores behind the chunk cache);
* the network slots, in a keeper process (``slots``; owner files in ``/run/ember/slots``,
  orphans reclaimed at start), with ``warm_slots`` created ahead so a start does not wait
  ~50 ms for netlink and iptables;
* the sandbox processes (``WorkerPool``), ``idle_workers`` of them forked ahead;
* a cache of ``BuildInfo`` (metadata, snapfile, machine) per build, fetched once;
* the live sandboxes, and one monitor thread that notices a sandbox process exiting (its VMM
  died) and fails that sandbox alone, within a fraction of a second.

Starting a node reclaims what killed owners left (``cleanup.reclaim_orphans`` and the slot
pool's orphan reclaim); ``reclaimed`` says what was found. ``close`` kills every sandbox still
running and stops the pools: nothing of the node outlives it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.connection
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from ember.build import claim_build
from ember.environment import Environment
from ember.errors import BuildError, EmberError
from ember.network import EgressPolicy, Slot, SlotConfig
from ember.network.egress import DEFAULT_EGRESS
from ember.network.ownership import OWNERS_DIR
from ember.sandbox.cleanup import Reclaimed, reclaim_orphans
from ember.sandbox.errors import TargetTaken
from ember.sandbox.records import BuildInfo, EventSink, SandboxEvent, discard_events
from ember.sandbox.resume import load_build_info, open_read_storage
from ember.sandbox.slots import SlotKeeper
from ember.sandbox.worker import WorkerClient, WorkerPool, WorkerSetup
from ember.storage import BuildPaths, ChunkCache


class NodeSandbox(Protocol):
    """What a node needs of the sandboxes it holds: to watch their processes and to end them."""

    @property
    def id(self) -> str: ...

    def process_sentinel(self) -> int | None: ...

    def process_exited(self) -> None: ...

    def kill(self) -> None: ...


_log = logging.getLogger(__name__)

_MONITOR_POLL_S = 1.0


class Node:
    """See the module docstring; a context manager."""

    def __init__(
        self,
        storage_url: str,
        *,
        env: Environment | None = None,
        events: EventSink = discard_events,
        idle_workers: int = 1,
        warm_slots: int = 1,
        slot_config: SlotConfig | None = None,
        owners_dir: Path = OWNERS_DIR,
        worker_log_level: int = logging.WARNING,
    ) -> None:
        self.storage_url = storage_url
        self.env = env or Environment.resolve(storage_url)
        self.storage = open_read_storage(storage_url, self.env)
        self.events = events
        self.reclaimed: Reclaimed = reclaim_orphans(self.env)
        self.slots = SlotKeeper(slot_config, owners_dir, warm_slots, worker_log_level)
        self.reclaimed.slots += self.slots.reclaimed
        self.workers = WorkerPool(WorkerSetup(storage_url, self.env, worker_log_level), idle_workers)
        self._builds: dict[uuid.UUID, BuildInfo] = {}
        self._build_locks: dict[uuid.UUID, threading.Lock] = {}
        self._builds_lock = threading.Lock()
        self._sandboxes: dict[str, NodeSandbox] = {}
        self._sandboxes_lock = threading.Lock()
        self._closed = threading.Event()
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._monitor = threading.Thread(target=self._watch, name="sandbox-monitor", daemon=True)
        self._monitor.start()
        self._reaper = ThreadPoolExecutor(1, thread_name_prefix="sandbox-reaper")

    # -- builds ------------------------------------------------------------------------------

    def build_info(self, build_id: uuid.UUID) -> BuildInfo:
        """The build's ``BuildInfo``, fetched on first use and kept (builds never change)."""
        with self._builds_lock:
            known = self._builds.get(build_id)
            if known is not None:
                return known
            lock = self._build_locks.setdefault(build_id, threading.Lock())
        with lock:
            with self._builds_lock:
                known = self._builds.get(build_id)
            if known is None:
                known = load_build_info(self.storage, build_id, self.env)
                with self._builds_lock:
                    self._builds[build_id] = known
            return known

    def forget_build(self, build_id: uuid.UUID) -> None:
        """Drop the cached ``BuildInfo`` of a build whose metadata.json was rewritten (prefetch data)."""
        with self._builds_lock:
            self._builds.pop(build_id, None)

    def claim(self, build_id: uuid.UUID, writer: str) -> uuid.UUID:
        """Make this node the only writer of ``build_id`` (``claim_build``); the id, for ``Sandbox.pause``."""
        try:
            claim_build(self.storage, build_id, writer)
        except BuildError as exc:
            raise TargetTaken(str(exc)) from exc
        return build_id

    def release_claim(self, build_id: uuid.UUID, *, keep_complete: bool = True) -> None:
        """Give up a build this node claimed and did not finish: every object it wrote goes with the claim.

        Only for a claim this node holds; a build with metadata.json is complete and kept,
        unless ``keep_complete`` is False: a pause its caller was told had failed (interrupted
        after the sandbox process had stored it) must not leave a build behind either.
        """
        paths = BuildPaths(build_id)
        if keep_complete and self.storage.exists(paths.metadata):
            return
        try:
            if not keep_complete:
                self.storage.delete_prefix(paths.metadata)  # first: never a half-removed "complete" build
            self.storage.delete_prefix(f"{paths.build_id}/")
        except EmberError as exc:
            _log.warning("cannot remove the unfinished build %s: %s", build_id, exc)

    # -- slots -------------------------------------------------------------------------------

    def take_slot(self, egress: EgressPolicy = DEFAULT_EGRESS) -> Slot:
        """A network slot with ``egress`` in force: a warm one if there is one, else one made now."""
        return self.slots.acquire(egress)

    def release_slot(self, slot: Slot) -> None:
        self.slots.release(slot)

    def update_egress(self, slot: Slot, egress: EgressPolicy) -> None:
        self.slots.update_egress(slot, egress)

    # -- sandboxes ---------------------------------------------------------------------------

    def defer(self, work: Callable[[], None]) -> None:
        """Run ``work`` (a sandbox letting go of what it held) on the node's reaper thread."""
        self._reaper.submit(_logged, work)

    def take_worker(self) -> WorkerClient:
        return self.workers.take()

    def emit(self, event: SandboxEvent) -> None:
        try:
            self.events(event)
        except Exception:  # a broken sink must not break a sandbox
            _log.exception("event sink failed on %s", event.name)

    def register(self, sandbox: NodeSandbox) -> None:
        with self._sandboxes_lock:
            self._sandboxes[sandbox.id] = sandbox
        self._wake()

    def unregister(self, sandbox: NodeSandbox) -> None:
        with self._sandboxes_lock:
            if self._sandboxes.get(sandbox.id) is sandbox:
                del self._sandboxes[sandbox.id]
        self._wake()

    def get(self, sandbox_id: str) -> NodeSandbox | None:
        with self._sandboxes_lock:
            return self._sandboxes.get(sandbox_id)

    def sandboxes(self) -> list[NodeSandbox]:
        with self._sandboxes_lock:
            return list(self._sandboxes.values())

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"x")

    def _watch(self) -> None:
        """Fail a sandbox whose process exited on its own (its VMM died)."""
        while not self._closed.is_set():
            watched: dict[Any, NodeSandbox] = {}
            for sandbox in self.sandboxes():
                sentinel = sandbox.process_sentinel()
                if sentinel is not None:
                    watched[sentinel] = sandbox
            ready = multiprocessing.connection.wait([self._wake_read, *watched], timeout=_MONITOR_POLL_S)
            for item in ready:
                if item == self._wake_read:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_read, 4096)
                elif item in watched:
                    watched[item].process_exited()

    # -- host-wide ---------------------------------------------------------------------------

    def drop_caches(self) -> None:
        """Empty the chunk cache and the host's page cache: a *host-wide* effect, for cold benchmarks."""
        if isinstance(self.storage, ChunkCache):
            self.storage.close()
            for entry in self.storage.root.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
        subprocess.run(["sync"], check=False)
        with contextlib.suppress(OSError):
            Path("/proc/sys/vm/drop_caches").write_text("3\n")

    def close(self) -> None:
        """Kill every sandbox still running, stop the pools, release the warm slots."""
        for sandbox in self.sandboxes():
            try:
                sandbox.kill()
            except Exception as exc:
                _log.warning("killing sandbox %s at shutdown failed: %s", sandbox.id, exc)
        self._reaper.shutdown(wait=True)  # before the keeper goes: releases return slots to it
        self._closed.set()
        self._wake()
        self.workers.close()
        self._monitor.join(_MONITOR_POLL_S * 2)
        self.slots.close()
        for fd in (self._wake_read, self._wake_write):
            os.close(fd)

    def __enter__(self) -> Node:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _logged(work: Callable[[], None]) -> None:
    try:
        work()
    except Exception:  # a release that fails is logged; the node's next start reclaims the rest
        _log.exception("releasing a sandbox's resources failed")

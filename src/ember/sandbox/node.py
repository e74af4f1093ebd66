"""A host's sandbox machinery, shared by every sandbox it runs: the CLI holds one per command, the
daemon one for its life.

A ``Node`` owns, for one storage location:

* the storage as sandboxes read it (``open_read_storage``: remote stores behind the chunk cache);
* the network slots, in a keeper process (``slots``; owner files in ``/run/ember/slots``,
  orphans reclaimed at start), with ``warm_slots`` created ahead so a start does not wait
  ~50 ms for netlink and iptables;
* the sandbox processes (``WorkerPool``), ``idle_workers`` of them forked ahead;
* a cache of ``BuildInfo`` (metadata, snapfile, machine) per build, fetched once and bounded
  as the original's template cache (``buildcache``: TTL since last use, a count, never a build
  a running sandbox uses; with a remote store evicting also removes the downloaded snapfile);
* the live sandboxes, and one monitor thread that notices a sandbox process exiting (its VMM
  died) and fails that sandbox alone, within a fraction of a second.

Starting a node reclaims what killed owners left (``cleanup.reclaim_orphans`` and the slot
pool's orphan reclaim); ``reclaimed`` says what was found. It also sweeps the template cache of
snapfile downloads unused for longer than the build TTL or left half-written. ``close`` kills
every sandbox still running and stops the pools: nothing of the node outlives it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.connection
import os
import shutil
import subprocess
import threading
import time
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
from ember.sandbox.buildcache import DEFAULT_MAX_BUILDS, DEFAULT_TTL_S, BuildCache, sweep_downloads
from ember.sandbox.cleanup import Reclaimed, reclaim_orphans
from ember.sandbox.errors import BuildNotFound, TargetTaken
from ember.sandbox.records import BuildInfo, EventSink, SandboxEvent, discard_events
from ember.sandbox.resume import TEMPLATE_CACHE, load_build_info, open_read_storage
from ember.sandbox.slots import SlotKeeper
from ember.sandbox.worker import WorkerClient, WorkerPool, WorkerSetup
from ember.storage import BuildPaths, ChunkCache, LocalStorage


class NodeSandbox(Protocol):
    """What a node needs of the sandboxes it holds: to watch their processes and to end them."""

    @property
    def id(self) -> str: ...

    @property
    def build_id(self) -> uuid.UUID: ...

    def process_sentinel(self) -> int | None: ...

    def process_exited(self) -> None: ...

    def kill(self) -> None: ...


_log = logging.getLogger(__name__)

_MONITOR_POLL_S = 1.0
_BUILD_SWEEP_S = 60.0


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
        build_ttl_s: float = DEFAULT_TTL_S,
        max_builds: int = DEFAULT_MAX_BUILDS,
    ) -> None:
        self.storage_url = storage_url
        self.env = env or Environment.resolve(storage_url)
        self.storage = open_read_storage(storage_url, self.env)
        self.events = events
        self.reclaimed: Reclaimed = reclaim_orphans(self.env)
        self.slots = SlotKeeper(slot_config, owners_dir, warm_slots, worker_log_level)
        self.reclaimed.slots += self.slots.reclaimed
        self.workers = WorkerPool(WorkerSetup(storage_url, self.env, worker_log_level), idle_workers)
        downloads = self.env.orchestrator_base_path / TEMPLATE_CACHE
        sweep_downloads(downloads, build_ttl_s)
        self._builds = BuildCache(
            self._load_build,
            self._build_exists,
            self._builds_in_use,
            None if isinstance(self.storage, LocalStorage) else downloads,
            ttl_s=build_ttl_s,
            max_builds=max_builds,
        )
        self._sandboxes: dict[str, NodeSandbox] = {}
        self._sandboxes_lock = threading.Lock()
        self._closed = threading.Event()
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._monitor = threading.Thread(target=self._watch, name="sandbox-monitor", daemon=True)
        self._monitor.start()
        self._reaper = ThreadPoolExecutor(1, thread_name_prefix="sandbox-reaper")

    # -- builds ------------------------------------------------------------------------------

    def build_info(self, build_id: uuid.UUID) -> BuildInfo:
        """The build's ``BuildInfo``, from the node's bounded cache (``buildcache``).

        Raises ``BuildNotFound`` for a build the store does not have, also one deleted since
        it was cached (noticed within ``buildcache.DEFAULT_RECHECK_S``).
        """
        return self._builds.get(build_id)

    def forget_build(self, build_id: uuid.UUID) -> None:
        """Drop the cached ``BuildInfo``: its metadata.json was rewritten (prefetch data), or a start
        from it found an object missing, so the next ``build_info`` asks the store again."""
        self._builds.forget(build_id)

    def _load_build(self, build_id: uuid.UUID) -> BuildInfo:
        # A chunk cache keeps a deleted build's metadata.json: only the store itself can say it went.
        if isinstance(self.storage, ChunkCache) and not self._build_exists(build_id):
            raise BuildNotFound(
                f"build {build_id} does not exist in {self.storage.url}: it has no metadata.json "
                "(it was deleted, or a create-build or pause did not finish); pick a finished build"
            )
        return load_build_info(self.storage, build_id, self.env)

    def _build_exists(self, build_id: uuid.UUID) -> bool:
        store = self.storage.inner if isinstance(self.storage, ChunkCache) else self.storage
        return store.exists(BuildPaths(build_id).metadata)

    def _builds_in_use(self) -> set[uuid.UUID]:
        return {sandbox.build_id for sandbox in self.sandboxes()}

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
        self._builds.touch(sandbox.build_id)  # its build's TTL counts from the end of its last sandbox
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
        """Fail a sandbox whose process exited on its own (its VMM died); now and then, sweep the builds."""
        next_sweep = time.monotonic() + _BUILD_SWEEP_S
        while not self._closed.is_set():
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + _BUILD_SWEEP_S
                try:
                    self._builds.sweep()
                    self._builds.sweep_leftovers()
                except Exception:  # the monitor must outlive a failed sweep
                    _log.exception("sweeping the build cache failed")
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

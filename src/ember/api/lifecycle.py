"""Ends of life: the evictor (timeouts), and the node sync (what the nodes really run).

**Evictor.** The original's API evictor polls its store every 50 ms for sandboxes past
their end time. ember's sleeps until the earliest end time in the catalog, at least
``POLL_MIN_S`` (50 ms) and at most ``POLL_MAX_S`` (1 s), and wakes early whenever the
catalog changes (a new sandbox, a shortened timeout). An expired sandbox created with
``autoPause`` is paused (filesystem-only when asked), any other is killed; when the pause
fails the sandbox is killed. At most ``MAX_EVICTIONS`` (256) run at once. The nodes keep
end times but never enforce them: the API is authoritative.

**Node sync.** Every 20 s (and once at start), each node's ``ServiceInfo`` refreshes its
load, and its ``List`` is compared with the catalog:

* a catalog sandbox the node no longer runs is dropped (its VM ended; a sandbox that was
  resumed from a snapshot is paused again, since its snapshot row stays);
* a node sandbox the catalog does not know is an orphan and is killed, as the original
  kills VMs unknown to its store: nobody can reach, extend or pause it, so it would only
  hold the node's resources. Sandboxes being created, paused or killed are left alone.
  This assumes one API process per set of nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time

from ember.api.catalog import LiveSandbox, SandboxState, TransitionRefused
from ember.api.errors import ApiError
from ember.api.nodes import SYNC_INTERVAL_S, NodeClient, NodeError
from ember.api.plane import ControlPlane, utcnow
from ember.api.snapshots import pause_live
from ember.api.store import StoreError

_log = logging.getLogger(__name__)

POLL_MIN_S = 0.05
POLL_MAX_S = 1.0
MAX_EVICTIONS = 256


class Evictor:
    """Pauses or kills sandboxes at their end time (see the module docstring)."""

    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane
        self._slots = asyncio.Semaphore(MAX_EVICTIONS)
        self._evicting: dict[str, asyncio.Task[None]] = {}
        self.evicted = 0

    async def run(self) -> None:
        catalog = self._plane.catalog
        while True:
            catalog.changed.clear()
            now = utcnow()
            earliest: dt.datetime | None = None
            for live in catalog.all():
                if live.state is not SandboxState.RUNNING or live.sandbox_id in self._evicting:
                    continue
                if live.record.end_at <= now:
                    self._evicting[live.sandbox_id] = asyncio.create_task(self._evict(live))
                elif earliest is None or live.record.end_at < earliest:
                    earliest = live.record.end_at
            wait_s = POLL_MAX_S if earliest is None else (earliest - now).total_seconds()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(catalog.changed.wait(), min(max(wait_s, POLL_MIN_S), POLL_MAX_S))

    async def _evict(self, live: LiveSandbox) -> None:
        try:
            async with self._slots:
                await self._end(live)
        except (ApiError, StoreError, NodeError) as exc:
            _log.warning("evicting sandbox %s failed: %s", live.sandbox_id, exc)
        except Exception:
            _log.exception("evicting sandbox %s failed unexpectedly", live.sandbox_id)
        finally:
            self._evicting.pop(live.sandbox_id, None)

    async def _end(self, live: LiveSandbox) -> None:
        plane = self._plane
        if live.record.end_at > utcnow():  # extended while waiting for a slot
            return
        spec = live.record.spec
        try:
            if spec.auto_pause:
                plane.catalog.transition(live, SandboxState.PAUSING)
                try:
                    await pause_live(plane, live, filesystem_only=spec.auto_pause_filesystem_only)
                    _log.info("sandbox %s timed out and was paused", live.sandbox_id)
                    self.evicted += 1
                    return
                except ApiError as exc:
                    _log.warning(
                        "sandbox %s timed out; pausing it failed, killing it: %s", live.sandbox_id, exc
                    )
                    if plane.catalog.get(live.sandbox_id) is not live:
                        return
            plane.catalog.transition(live, SandboxState.KILLING)
        except TransitionRefused:
            return  # someone else is pausing or killing it
        await plane.kill_live(live, "timeout")
        _log.info("sandbox %s timed out and was killed", live.sandbox_id)
        self.evicted += 1

    async def stop(self) -> None:
        tasks = list(self._evicting.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class NodeSync:
    """Keeps the catalog and the nodes in agreement (see the module docstring)."""

    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane
        self.orphans_killed = 0

    async def load(self) -> int:
        """Put the store's running sandboxes back in the catalog (an API start); returns how many."""
        plane = self._plane
        loaded = 0
        for record in await plane.store.list_sandboxes():
            if plane.nodes.get(record.node) is None:
                _log.warning(
                    "sandbox %s ran on %s, which is no longer an -orchestrator: dropped",
                    record.sandbox_id,
                    record.node,
                )
                await plane.store.delete_sandbox(record.sandbox_id)
                continue
            plane.catalog.add(record)
            loaded += 1
        return loaded

    async def sync(self) -> None:
        """ServiceInfo and List of every node, then reconcile each node that answered."""
        await self._plane.nodes.refresh_all()
        await asyncio.gather(
            *(self.reconcile(node) for node in self._plane.nodes.nodes.values() if node.reachable),
            return_exceptions=False,
        )

    async def reconcile(self, node: NodeClient) -> None:
        plane = self._plane
        asked_s = time.monotonic()
        try:
            running = await node.list()
        except NodeError as exc:
            _log.info("listing the sandboxes of %s failed: %s", node.address, exc)
            return
        on_node = {item.sandbox_id for item in running}
        for live in plane.catalog.all():
            if live.record.node != node.address or live.registered_s >= asked_s:
                continue
            if live.state is SandboxState.RUNNING and live.sandbox_id not in on_node:
                _log.warning("sandbox %s is no longer running on %s: dropped", live.sandbox_id, node.address)
                try:
                    await plane.forget(live)
                except StoreError as exc:
                    _log.warning("dropping sandbox %s failed: %s", live.sandbox_id, exc)
        for item in running:
            if plane.catalog.get(item.sandbox_id) is None and not plane.catalog.in_flight(item.sandbox_id):
                _log.warning(
                    "sandbox %s on %s is unknown to the control plane: killing the orphan",
                    item.sandbox_id,
                    node.address,
                )
                try:
                    await node.delete(item.sandbox_id, "orphan: unknown to the control plane")
                    self.orphans_killed += 1
                except NodeError as exc:
                    _log.warning("killing orphan %s failed: %s", item.sandbox_id, exc)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            try:
                await self.sync()
            except Exception:
                _log.exception("syncing the nodes failed")

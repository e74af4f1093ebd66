"""The running sandboxes, in memory: their state machine, the waits on it, the team's slots.

The original keeps running sandboxes in Redis; ember keeps them here, in the API process,
and writes each change through to the store's ``sandboxes`` table so a restarted API finds
them again. Everything runs on the API's event loop: no locks beyond asyncio's.

States and the transitions allowed (the original's ``sandboxtypes/states.go``)::

    running       -> pausing, killing, snapshotting
    pausing       -> killing            (and back to running when a pause fails and the VM lives)
    snapshotting  -> running, killing, pausing
    killing       -> (gone)

A sandbox leaves the catalog when it is killed or paused; ``wait_settled`` returns once a
sandbox is running again or gone. Team slots count every sandbox in the catalog plus the
creates and resumes in flight (``reserve``), the original's reservation.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

from ember.api.errors import concurrency_limit
from ember.api.records import SandboxRecord, Team


class SandboxState(enum.StrEnum):
    RUNNING = "running"
    PAUSING = "pausing"
    KILLING = "killing"
    SNAPSHOTTING = "snapshotting"


_ALLOWED: dict[SandboxState, frozenset[SandboxState]] = {
    SandboxState.RUNNING: frozenset({SandboxState.PAUSING, SandboxState.KILLING, SandboxState.SNAPSHOTTING}),
    SandboxState.PAUSING: frozenset({SandboxState.KILLING, SandboxState.RUNNING}),
    SandboxState.SNAPSHOTTING: frozenset({SandboxState.RUNNING, SandboxState.KILLING, SandboxState.PAUSING}),
    SandboxState.KILLING: frozenset(),
}


class TransitionRefused(Exception):
    """The sandbox is in ``state``, from which the asked transition is not allowed."""

    def __init__(self, sandbox_id: str, state: SandboxState, wanted: SandboxState) -> None:
        self.sandbox_id = sandbox_id
        self.state = state
        self.wanted = wanted
        super().__init__(f"sandbox {sandbox_id} is {state}: it cannot become {wanted}")


@dataclass
class LiveSandbox:
    """One sandbox of the catalog. ``record`` is replaced (frozen) when its end time changes."""

    record: SandboxRecord
    state: SandboxState = SandboxState.RUNNING
    registered_s: float = field(default_factory=time.monotonic)
    _settled: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        if self.state is SandboxState.RUNNING:
            self._settled.set()

    @property
    def sandbox_id(self) -> str:
        return self.record.sandbox_id

    @property
    def team_id(self) -> str:
        return self.record.spec.team_id


class Catalog:
    """The running sandboxes of every team (see the module docstring)."""

    def __init__(self) -> None:
        self._live: dict[str, LiveSandbox] = {}
        self._reserved: dict[str, int] = {}
        self._in_flight: set[str] = set()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self.changed = asyncio.Event()
        """Set on every add, removal and end-time change: the evictor's wake-up."""

    def __len__(self) -> int:
        return len(self._live)

    def get(self, sandbox_id: str) -> LiveSandbox | None:
        return self._live.get(sandbox_id)

    def all(self) -> list[LiveSandbox]:
        return list(self._live.values())

    def of_team(self, team_id: str) -> list[LiveSandbox]:
        return [live for live in self._live.values() if live.team_id == team_id]

    def add(self, record: SandboxRecord) -> LiveSandbox:
        live = LiveSandbox(record)
        self._live[record.sandbox_id] = live
        self.changed.set()
        return live

    def remove(self, sandbox_id: str) -> None:
        live = self._live.pop(sandbox_id, None)
        if live is not None:
            live._settled.set()
            self.changed.set()

    def update(self, sandbox_id: str, record: SandboxRecord) -> None:
        live = self._live.get(sandbox_id)
        if live is not None:
            live.record = record
            self.changed.set()

    def transition(self, live: LiveSandbox, wanted: SandboxState) -> None:
        """Move ``live`` to ``wanted``; raises TransitionRefused when the machine forbids it."""
        if self._live.get(live.sandbox_id) is not live or wanted not in _ALLOWED[live.state]:
            raise TransitionRefused(live.sandbox_id, live.state, wanted)
        live.state = wanted
        if wanted is SandboxState.RUNNING:
            live._settled.set()
        else:
            live._settled.clear()

    def back_to_running(self, live: LiveSandbox) -> bool:
        """End a pause or snapshot that did not happen: ``live`` runs on. False when it left."""
        if self._live.get(live.sandbox_id) is not live:
            return False
        if live.state is not SandboxState.RUNNING:
            self.transition(live, SandboxState.RUNNING)
        return True

    async def wait_settled(self, live: LiveSandbox, timeout_s: float) -> bool:
        """Wait until ``live`` is running again or gone; False when ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(live._settled.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def lock(self, sandbox_id: str) -> asyncio.Lock:
        """The lock that serializes resuming, killing and deleting the paused ``sandbox_id``.

        Kept only while someone holds it (a weak mapping), so ids seen once cost nothing later.
        """
        lock = self._locks.get(sandbox_id)
        if lock is None:
            lock = self._locks[sandbox_id] = asyncio.Lock()
        return lock

    def used_slots(self, team_id: str) -> int:
        return len(self.of_team(team_id)) + self._reserved.get(team_id, 0)

    @contextlib.contextmanager
    def reserve(self, team: Team, sandbox_id: str) -> Iterator[None]:
        """Hold one of the team's concurrent-sandbox slots while ``sandbox_id`` starts.

        Raises ApiError 429 (with Retry-After) when the team has none left. Add the sandbox to
        the catalog before leaving the block, so the slot passes to it without a gap.
        """
        if self.used_slots(team.id) >= team.max_concurrent_sandboxes:
            raise concurrency_limit(team.max_concurrent_sandboxes)
        self._reserved[team.id] = self._reserved.get(team.id, 0) + 1
        self._in_flight.add(sandbox_id)
        try:
            yield
        finally:
            self._in_flight.discard(sandbox_id)
            left = self._reserved[team.id] - 1
            if left:
                self._reserved[team.id] = left
            else:
                del self._reserved[team.id]

    def in_flight(self, sandbox_id: str) -> bool:
        """Whether ``sandbox_id`` is being created or resumed right now (not yet in the catalog)."""
        return sandbox_id in self._in_flight

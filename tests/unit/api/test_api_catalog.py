"""The catalog's state machine, its waits and the team's concurrent-sandbox slots."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from ember.api.catalog import Catalog, SandboxState, TransitionRefused
from ember.api.errors import CONCURRENCY_LIMIT, ApiError
from ember.api.records import SandboxRecord, SandboxSpec, Team

TEAM = Team("team", "default", max_concurrent_sandboxes=2)
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _record(sandbox_id: str, team: Team = TEAM) -> SandboxRecord:
    spec = SandboxSpec(team.id, "t", "t", "b", 2, 512, 1024, "0.5.4", 24)
    return SandboxRecord(sandbox_id, spec, "node", "c", "e", NOW, NOW)


def test_the_transitions_are_the_originals() -> None:
    catalog = Catalog()
    live = catalog.add(_record("i1"))
    catalog.transition(live, SandboxState.SNAPSHOTTING)
    catalog.transition(live, SandboxState.RUNNING)
    catalog.transition(live, SandboxState.PAUSING)
    with pytest.raises(TransitionRefused):
        catalog.transition(live, SandboxState.SNAPSHOTTING)
    catalog.transition(live, SandboxState.KILLING)
    for wanted in SandboxState:
        with pytest.raises(TransitionRefused):
            catalog.transition(live, wanted)


def test_a_removed_sandbox_cannot_transition() -> None:
    catalog = Catalog()
    live = catalog.add(_record("i1"))
    catalog.remove("i1")
    with pytest.raises(TransitionRefused):
        catalog.transition(live, SandboxState.KILLING)


def test_waiters_wake_when_a_pause_ends_or_the_sandbox_goes() -> None:
    async def scenario() -> list[bool]:
        catalog = Catalog()
        live = catalog.add(_record("i1"))
        catalog.transition(live, SandboxState.SNAPSHOTTING)
        waiting = asyncio.create_task(catalog.wait_settled(live, 10))
        await asyncio.sleep(0)
        catalog.transition(live, SandboxState.RUNNING)
        first = await waiting
        catalog.transition(live, SandboxState.PAUSING)
        waiting = asyncio.create_task(catalog.wait_settled(live, 10))
        await asyncio.sleep(0)
        catalog.remove("i1")
        second = await waiting
        other = catalog.add(_record("i2"))
        catalog.transition(other, SandboxState.PAUSING)
        third = await catalog.wait_settled(other, 0.01)
        return [first, second, third]

    assert asyncio.run(scenario()) == [True, True, False]


def test_reservations_count_against_the_team_limit_until_the_sandbox_is_added() -> None:
    catalog = Catalog()
    catalog.add(_record("i1"))
    with catalog.reserve(TEAM, "i2"):
        assert catalog.in_flight("i2")
        with pytest.raises(ApiError) as caught, catalog.reserve(TEAM, "i3"):
            pass
        assert caught.value.status == 429
        assert caught.value.message == CONCURRENCY_LIMIT.format(limit=2)
        assert caught.value.headers["Retry-After"] == "1"
        catalog.add(_record("i2"))
    assert not catalog.in_flight("i2")
    assert catalog.used_slots(TEAM.id) == 2
    other = Team("other", "other", max_concurrent_sandboxes=1)
    with catalog.reserve(other, "i9"):
        assert catalog.used_slots(other.id) == 1
    assert catalog.used_slots(other.id) == 0

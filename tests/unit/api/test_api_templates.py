"""``-template alias=<build>[,...]``: parsing, and registering builds idempotently."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ember.api import open_store
from ember.api.records import BuildStatus
from ember.api.templates import TemplateRegistration, register
from ember.errors import UsageError

BUILD_A = "11111111-1111-4111-8111-111111111111"
BUILD_B = "22222222-2222-4222-8222-222222222222"


def test_a_registration_parses_its_options() -> None:
    parsed = TemplateRegistration.parse(f"Base={BUILD_A},vcpu=4,memory=2048,disk=4096,envd=0.6.4")
    assert parsed == TemplateRegistration("base", BUILD_A, 4, 2048, 4096, "0.6.4")
    assert TemplateRegistration.parse(f"base={BUILD_A}").vcpu == 2


@pytest.mark.parametrize(
    "text",
    ["base", f"base={BUILD_A},cpu=2", "base=not-a-uuid", f"base={BUILD_A},vcpu=0", f"bad name={BUILD_A}"],
)
def test_bad_registrations_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        TemplateRegistration.parse(text)


def test_registering_again_is_a_no_op_and_a_new_build_becomes_current(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await open_store(f"sqlite://{tmp_path / 'api.sqlite3'}")
        try:
            team = await store.default_team()
            first = await register(store, team, TemplateRegistration("base", BUILD_A))
            assert await register(store, team, TemplateRegistration("base", BUILD_A)) == first
            second = await register(store, team, TemplateRegistration("base", BUILD_B, vcpu=4))
            assert (second.id, second.build_id) == (first.id, BUILD_B)
            build = await store.get_build(BUILD_B)
            assert build is not None and (build.vcpu, build.status) == (4, BuildStatus.READY)
            with pytest.raises(UsageError):
                await register(store, team, TemplateRegistration("other", BUILD_A))
        finally:
            await store.close()

    asyncio.run(scenario())

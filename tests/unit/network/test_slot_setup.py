"""create_slot is all or nothing and never undoes what it did not make; every entry point needs root.

The kernel-facing steps are replaced by recorders here, so the undo logic is checked for a
failure at every step; tests/integration/test_network_slots.py checks the real objects.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ember.errors import UsageError
from ember.network import (
    NetworkError,
    SlotBusy,
    SlotConfig,
    create_slot,
    links,
    nat,
    reclaim_leftovers,
    remove_slot,
)
from ember.network import slot as slot_module

SETUP_STEPS = [
    "create_namespace",
    "create_veth",
    "configure_namespace",
    "install_namespace_rules",
    "add_host_route",
    "install_host_rules",
]


class Recorder:
    """Stands in for the links/nat steps: records calls, fails at ``fail_at`` with ``error``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, gateway: str | None = "ens4") -> None:
        self.calls: list[str] = []
        self.fail_at: str | None = None
        self.error: Exception = NetworkError("injected failure")
        monkeypatch.setattr(slot_module.os, "geteuid", lambda: 0)
        for module, name in [
            (links, "create_namespace"),
            (links, "create_veth"),
            (links, "configure_namespace"),
            (nat, "install_namespace_rules"),
            (links, "add_host_route"),
            (nat, "install_host_rules"),
            (links, "remove_namespace"),
            (links, "remove_link"),
            (links, "remove_host_route"),
            (nat, "delete_rules"),
        ]:
            monkeypatch.setattr(module, name, self._step(name))
        monkeypatch.setattr(links, "default_gateway_interface", lambda: gateway)
        monkeypatch.setattr(nat, "host_tagged_rules", lambda: [])

    def _step(self, name: str) -> Callable[..., None]:
        def step(*args: object) -> None:
            self.calls.append(name)
            if name == self.fail_at:
                raise self.error

        return step


def test_a_created_slot_leaves_nothing_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    slot = create_slot(4, SlotConfig())
    assert slot.idx == 4
    assert recorder.calls == SETUP_STEPS


def test_without_a_default_route_the_host_guard_is_still_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch, gateway=None)
    create_slot(4, SlotConfig())
    assert recorder.calls == SETUP_STEPS


@pytest.mark.parametrize(
    ("fail_at", "undone"),
    [
        ("create_veth", ["remove_namespace"]),
        ("configure_namespace", ["remove_link", "remove_namespace"]),
        ("install_namespace_rules", ["remove_link", "remove_namespace"]),
        ("add_host_route", ["remove_link", "remove_namespace"]),
        ("install_host_rules", ["delete_rules", "remove_link", "remove_namespace"]),
    ],
)
def test_a_failed_step_undoes_every_earlier_step_newest_first(
    monkeypatch: pytest.MonkeyPatch, fail_at: str, undone: list[str]
) -> None:
    recorder = Recorder(monkeypatch)
    recorder.fail_at = fail_at
    with pytest.raises(NetworkError, match="injected failure"):
        create_slot(4, SlotConfig())
    done = SETUP_STEPS[: SETUP_STEPS.index(fail_at) + 1]
    assert recorder.calls == done + undone


def test_a_busy_namespace_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    recorder.fail_at, recorder.error = "create_namespace", SlotBusy(4, "network namespace ns-4")
    with pytest.raises(SlotBusy, match="ns-4 already exists"):
        create_slot(4, SlotConfig())
    assert recorder.calls == ["create_namespace"]


def test_a_busy_host_veth_is_left_alone_but_the_new_namespace_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    recorder.fail_at, recorder.error = "create_veth", SlotBusy(4, "host link veth-4")
    with pytest.raises(SlotBusy):
        create_slot(4, SlotConfig())
    assert recorder.calls == ["create_namespace", "create_veth", "remove_namespace"]


def test_remove_slot_takes_down_rules_route_veth_then_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    remove_slot(SlotConfig().slot(4))
    assert recorder.calls == ["delete_rules", "remove_host_route", "remove_link", "remove_namespace"]


def test_every_entry_point_tells_a_non_root_user_to_run_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slot_module.os, "geteuid", lambda: 1000)
    slot = SlotConfig().slot(1)
    for call in (lambda: create_slot(1, SlotConfig()), lambda: remove_slot(slot), reclaim_leftovers):
        with pytest.raises(UsageError, match=r"needs root .* run ember as root"):
            call()

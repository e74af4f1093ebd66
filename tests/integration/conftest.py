"""envd fixtures shared by the agent's integration tests: one bundle per module, one agent per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from envd_agent import Agent, running_agent

from ember.envd import EnvdClient, build_agent


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_agent(tmp_path_factory.mktemp("envd") / "envd")


@pytest.fixture
def agent(bundle: Path, tmp_path: Path) -> Iterator[Agent]:
    with running_agent(bundle, tmp_path) as running:
        yield running


@pytest.fixture
def client(agent: Agent) -> EnvdClient:
    return agent.client()

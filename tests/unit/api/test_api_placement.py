"""Placement: best-of-K scoring, the origin node first, retries and the error mapping."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import grpc
import pytest

from ember.api.errors import ApiError
from ember.api.nodes import NodeClient, NodeError, NodePool
from ember.api.placement import MAX_ATTEMPTS, choose, place, score
from ember.rpc import info_pb2, orchestrator_pb2


class _Node(NodeClient):
    """A NodeClient whose Create answers from a script instead of the network."""

    def __init__(
        self, name: str, allocated: int = 0, cpu_percent: int = 0, status: int = info_pb2.Healthy
    ) -> None:
        self.address = name
        self.host = name
        self.proxy_port = 5007
        self.info = info_pb2.ServiceInfoResponse(
            node_id=name,
            service_status=status,  # type: ignore[arg-type]
            metric_cpu_count=4,
            metric_cpu_allocated=allocated,
            metric_cpu_percent=cpu_percent,
        )
        self.reachable = True
        self.pending_vcpus = 0
        self.placed_vcpus = 0
        self.answers: list[grpc.StatusCode | None] = []
        self.calls = 0

    async def create(self, request: Any) -> orchestrator_pb2.SandboxCreateResponse:
        self.calls += 1
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise NodeError(self.address, "Create", answer, f"{self.address} says {answer.name}")
        return orchestrator_pb2.SandboxCreateResponse(client_id=self.address)


def _pool(*nodes: _Node) -> NodePool:
    pool = NodePool.__new__(NodePool)
    pool.nodes = {node.address: node for node in nodes}
    return pool


def _request(vcpu: int = 2) -> orchestrator_pb2.SandboxCreateRequest:
    return orchestrator_pb2.SandboxCreateRequest(sandbox=orchestrator_pb2.SandboxConfig(vcpu=vcpu))


def _place(pool: NodePool, preferred: str | None = None, capacity_wait_s: float = 0.0) -> str:
    placed = asyncio.run(
        place(pool, _request(), preferred, random.Random(7), capacity_wait_s=capacity_wait_s)
    )
    return placed.node.address


def test_the_score_is_the_originals_formula() -> None:
    node = _Node("a", allocated=6, cpu_percent=50)
    node.pending_vcpus = 2
    assert score(node, 2) == pytest.approx((2 + 6 + 2 + 0.5 * 0.5) / (4 * 4))


def test_the_least_loaded_of_the_sample_wins_and_unhealthy_nodes_never_do() -> None:
    nodes = [_Node("busy", allocated=12), _Node("idle"), _Node("draining", status=info_pb2.Draining)]
    assert choose(nodes, 2, set(), random.Random(1)) is nodes[1]
    assert choose(nodes, 2, {"idle"}, random.Random(1)) is nodes[0]
    assert choose([nodes[2]], 2, set(), random.Random(1)) is None


def test_a_resume_goes_to_its_origin_node_first() -> None:
    origin, other = _Node("origin", allocated=15), _Node("other")
    assert _place(_pool(origin, other), preferred="origin") == "origin"
    assert origin.placed_vcpus == 2 and origin.pending_vcpus == 0


def test_resource_exhausted_moves_on_without_counting_an_attempt() -> None:
    nodes = [_Node(f"n{i}") for i in range(MAX_ATTEMPTS + 2)]
    for node in nodes[:-1]:
        node.answers = [grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert _place(_pool(*nodes)) == nodes[-1].address


def test_a_burst_waits_for_a_full_node_instead_of_failing() -> None:
    """One node busy starting sandboxes refuses twice, then takes the create."""
    node = _Node("only")
    node.answers = [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert _place(_pool(node), capacity_wait_s=5.0) == "only"
    assert node.calls == 3 and node.placed_vcpus == 2 and node.pending_vcpus == 0


def test_a_node_that_stays_full_is_503_once_the_wait_is_over() -> None:
    node = _Node("only")
    node.answers = [grpc.StatusCode.RESOURCE_EXHAUSTED] * 100
    with pytest.raises(ApiError) as caught:
        _place(_pool(node), capacity_wait_s=0.3)
    assert (caught.value.status, caught.value.error_code) == (503, "sandbox_capacity_unavailable")
    assert 2 <= node.calls < 100


def test_other_errors_exclude_the_node_and_count_up_to_three_attempts() -> None:
    nodes = [_Node(f"n{i}") for i in range(5)]
    for node in nodes:
        node.answers = [grpc.StatusCode.INTERNAL]
    with pytest.raises(ApiError) as caught:
        _place(_pool(*nodes))
    assert (caught.value.status, caught.value.error_code) == (500, "sandbox_create_failed")
    assert sum(node.calls for node in nodes) == MAX_ATTEMPTS


@pytest.mark.parametrize(
    ("answers", "status", "error_code", "message"),
    [
        ([grpc.StatusCode.RESOURCE_EXHAUSTED], 503, "sandbox_capacity_unavailable", "at capacity"),
        ([grpc.StatusCode.DEADLINE_EXCEEDED], 504, "sandbox_placement_timeout", "in time"),
        ([grpc.StatusCode.INVALID_ARGUMENT], 500, "sandbox_create_failed", "says INVALID_ARGUMENT"),
        ([grpc.StatusCode.UNAVAILABLE], 500, "sandbox_create_failed", "failed to start it"),
    ],
)
def test_failures_map_to_the_originals_answers(
    answers: list[grpc.StatusCode], status: int, error_code: str, message: str
) -> None:
    node = _Node("only")
    node.answers = list(answers)
    with pytest.raises(ApiError) as caught:
        _place(_pool(node))
    assert (caught.value.status, caught.value.error_code) == (status, error_code)
    assert caught.value.message.startswith("Failed to place sandbox")
    assert message in caught.value.message


def test_no_healthy_node_is_503_no_compatible_node() -> None:
    with pytest.raises(ApiError) as caught:
        _place(_pool(_Node("down", status=info_pb2.Unhealthy)))
    assert (caught.value.status, caught.value.error_code) == (503, "sandbox_no_compatible_node")


def test_a_placement_that_takes_too_long_is_504() -> None:
    class _Slow(_Node):
        async def create(self, request: Any) -> orchestrator_pb2.SandboxCreateResponse:
            await asyncio.sleep(10)
            raise AssertionError("not reached")

    with pytest.raises(ApiError) as caught:
        asyncio.run(place(_pool(_Slow("slow")), _request(), timeout_s=0.01))
    assert (caught.value.status, caught.value.error_code) == (504, "sandbox_placement_timeout")

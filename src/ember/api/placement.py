"""Which node starts a sandbox: the origin node first for a resume, else the best of K.

The original's rules (``orchestrator/placement``):

* **best-of-K**: sample up to ``K`` (3) distinct Healthy nodes at random, score each as
  ``(vcpu_asked + vcpu_allocated + vcpu_pending + ALPHA * cpu_percent / 100) / (R * cpu_count)``
  with ``R`` = 4 (the overcommit) and ``ALPHA`` = 0.5, take the lowest;
* a node answering ``RESOURCE_EXHAUSTED`` is full: try another without counting an attempt;
  any other error excludes the node and counts one; at most ``MAX_ATTEMPTS`` (3);
* when every node left refused only for capacity, wait (``CAPACITY_RETRY_S``, growing) and
  ask them again, for up to ``CAPACITY_WAIT_S``: a node refuses fresh creates while three of
  its sandboxes are starting, which passes in about a second, so a burst of creates on a
  small cluster queues instead of failing;
* failures: a deadline -> 504 ``sandbox_placement_timeout``; capacity refusals only -> 503
  ``sandbox_capacity_unavailable``; no eligible node -> 503 ``sandbox_no_compatible_node``;
  create errors -> 500 ``sandbox_create_failed`` (the node's message is passed on only for
  FAILED_PRECONDITION and INVALID_ARGUMENT). Every message starts "Failed to place sandbox".

Not done: the CPU-compatibility filter against the build's machine info and node labels
(the static node list has neither), and scoring by SchedulingMetadata (the original does not).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from ember.api.errors import (
    CAPACITY_UNAVAILABLE,
    CREATE_FAILED,
    NO_COMPATIBLE_NODE,
    PLACEMENT_FAILED,
    PLACEMENT_TIMEOUT,
    ApiError,
)
from ember.api.nodes import NodeClient, NodeError, NodePool
from ember.rpc import orchestrator_pb2

K = 3
R = 4.0
ALPHA = 0.5
MAX_ATTEMPTS = 3
PLACEMENT_TIMEOUT_S = 180.0
CAPACITY_WAIT_S = 30.0
CAPACITY_RETRY_S = (0.05, 1.0)
"""The first and the longest pause between two rounds of asking full nodes again."""

_FORWARDED = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT})


@dataclass(frozen=True)
class Placed:
    node: NodeClient
    response: orchestrator_pb2.SandboxCreateResponse


def score(node: NodeClient, vcpu: int) -> float:
    """The best-of-K score of ``node`` for a sandbox of ``vcpu`` (lower is better)."""
    info = node.info
    if info is None:
        return float("inf")
    allocated = info.metric_cpu_allocated + node.placed_vcpus
    cpu_count = max(info.metric_cpu_count, 1)
    return (vcpu + allocated + node.pending_vcpus + ALPHA * info.metric_cpu_percent / 100) / (R * cpu_count)


def choose(
    nodes: Sequence[NodeClient], vcpu: int, excluded: set[str], rng: random.Random | None = None
) -> NodeClient | None:
    """Best of ``K`` random Healthy nodes not in ``excluded``; None when there is none."""
    candidates = [node for node in nodes if node.healthy and node.address not in excluded]
    if not candidates:
        return None
    sample = (rng or random).sample(candidates, min(K, len(candidates)))
    return min(sample, key=lambda node: score(node, vcpu))


async def place(
    pool: NodePool,
    request: orchestrator_pb2.SandboxCreateRequest,
    preferred: str | None = None,
    rng: random.Random | None = None,
    timeout_s: float = PLACEMENT_TIMEOUT_S,
    capacity_wait_s: float = CAPACITY_WAIT_S,
) -> Placed:
    """Create the sandbox on some node (see the module docstring); raises ApiError."""
    try:
        return await asyncio.wait_for(_place(pool, request, preferred, rng, capacity_wait_s), timeout_s)
    except TimeoutError:
        raise ApiError(
            504, f"{PLACEMENT_FAILED}: no node started it within {timeout_s:.0f} s", PLACEMENT_TIMEOUT
        ) from None


async def _place(
    pool: NodePool,
    request: orchestrator_pb2.SandboxCreateRequest,
    preferred: str | None,
    rng: random.Random | None,
    capacity_wait_s: float,
) -> Placed:
    vcpu = request.sandbox.vcpu
    excluded: set[str] = set()
    full: set[str] = set()
    attempts = 0
    refusals = 0
    last_error: NodeError | None = None
    first = pool.get(preferred) if preferred else None
    nodes = list(pool.nodes.values())
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + capacity_wait_s
    pause, longest = CAPACITY_RETRY_S
    while attempts < MAX_ATTEMPTS:
        node = first if first is not None and first.healthy else choose(nodes, vcpu, excluded, rng)
        first = None
        if node is None:
            if not full or loop.time() + pause > give_up_at:
                break
            await asyncio.sleep(pause)
            pause = min(pause * 2, longest)
            excluded -= full
            full.clear()
            continue
        node.pending_vcpus += vcpu
        try:
            response = await node.create(request)
        except NodeError as exc:
            excluded.add(node.address)
            if exc.code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                refusals += 1
                full.add(node.address)
            else:
                attempts += 1
                last_error = exc
            continue
        finally:
            node.pending_vcpus -= vcpu
        node.placed_vcpus += vcpu
        return Placed(node, response)
    raise _failure(last_error, refusals)


def _failure(last_error: NodeError | None, refusals: int) -> ApiError:
    if last_error is None:
        if refusals:
            return ApiError(
                503, f"{PLACEMENT_FAILED}: every node is at capacity, try again later", CAPACITY_UNAVAILABLE
            )
        return ApiError(
            503, f"{PLACEMENT_FAILED}: no healthy orchestrator node can take it", NO_COMPATIBLE_NODE
        )
    if last_error.code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return ApiError(504, f"{PLACEMENT_FAILED}: the node did not answer in time", PLACEMENT_TIMEOUT)
    if last_error.code in _FORWARDED:
        return ApiError(500, f"{PLACEMENT_FAILED}: {last_error.details}", CREATE_FAILED)
    return ApiError(500, f"{PLACEMENT_FAILED}: the node failed to start it", CREATE_FAILED)

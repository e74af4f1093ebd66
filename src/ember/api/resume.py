"""Auto-resume: traffic for a paused sandbox wakes it (the original's ``proxy_grpc.go`` policy).

``resume_for_traffic`` is the policy; the edge proxy calls it in-process, and
``ResumeService`` serves it as ``proxy.SandboxService/ResumeSandbox`` for an edge proxy in
another process (metadata ``e2b-sandbox-request-port``, ``e2b-traffic-access-token``,
``e2b-envd-access-token``; the answer is the node's address). The rules:

* a sandbox still in the catalog: its node, after waiting out a pause or snapshot (1 min);
* otherwise its snapshot must have ``autoResume`` on, else NOT_FOUND; a filesystem-only
  snapshot is FAILED_PRECONDITION (it must be resumed explicitly); a blocked team is refused;
* tokens: traffic to a port other than envd's on a sandbox with private ingress needs the
  traffic token; traffic to envd's port on a secure sandbox needs the envd token; else
  PERMISSION_DENIED;
* the resume timeout is the sandbox's ``autoResume`` timeout (its create timeout), at least
  ``MIN_AUTO_RESUME_S`` (300 s) and at most the team's max length; memory is always restored.
"""

from __future__ import annotations

import logging

import grpc

from ember.api.catalog import SandboxState
from ember.api.errors import STILL_TRANSITIONING, ApiError
from ember.api.nodes import NodeClient
from ember.api.plane import ControlPlane
from ember.api.sandboxes import TRANSITION_WAIT_S, resume
from ember.api.tokens import tokens_match
from ember.rpc import proxy_pb2, proxy_pb2_grpc
from ember.traffic.routing import ENVD_PORT

_log = logging.getLogger(__name__)

MIN_AUTO_RESUME_S = 300
DEFAULT_INTERNAL_GRPC_PORT = 5009
PORT_METADATA = "e2b-sandbox-request-port"
TRAFFIC_TOKEN_METADATA = "e2b-traffic-access-token"
ENVD_TOKEN_METADATA = "e2b-envd-access-token"
CREDENTIALS_REFUSED = "can't be resumed with the credentials provided"


class ResumeRefused(Exception):
    """The policy said no; ``code`` is the gRPC status, the edge maps it to HTTP."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


async def resume_for_traffic(
    plane: ControlPlane, sandbox_id: str, port: int, traffic_token: str | None, envd_token: str | None
) -> NodeClient:
    """The node that runs ``sandbox_id`` now, resuming it if the policy allows; raises ResumeRefused."""
    for _ in range(2):
        live = plane.catalog.get(sandbox_id)
        if live is None:
            break
        if live.state in (SandboxState.RUNNING, SandboxState.SNAPSHOTTING):
            return _node(plane, live.record.node, sandbox_id)
        if live.state is SandboxState.KILLING:
            raise ResumeRefused(grpc.StatusCode.NOT_FOUND, f"sandbox {sandbox_id} is being killed")
        if not await plane.catalog.wait_settled(live, TRANSITION_WAIT_S):
            raise ResumeRefused(grpc.StatusCode.FAILED_PRECONDITION, STILL_TRANSITIONING)
    async with plane.catalog.lock(sandbox_id):
        live = plane.catalog.get(sandbox_id)
        if live is not None:  # resumed by another request while this one waited for the lock
            if live.state is SandboxState.RUNNING:
                return _node(plane, live.record.node, sandbox_id)
            raise ResumeRefused(grpc.StatusCode.FAILED_PRECONDITION, STILL_TRANSITIONING)
        snapshot = await plane.store.get_snapshot(sandbox_id)
        if snapshot is None or not snapshot.spec.auto_resume:
            raise ResumeRefused(grpc.StatusCode.NOT_FOUND, f"sandbox {sandbox_id} not found")
        if snapshot.filesystem_only:
            raise ResumeRefused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"sandbox {sandbox_id} was paused without its memory: resume it explicitly (connect)",
            )
        team = await plane.store.get_team(snapshot.spec.team_id)
        if team is None or team.blocked:
            raise ResumeRefused(
                grpc.StatusCode.PERMISSION_DENIED, f"the team of sandbox {sandbox_id} is blocked"
            )
        spec = snapshot.spec
        if (
            port != ENVD_PORT
            and not spec.allow_public_traffic
            and not tokens_match(traffic_token, plane.tokens.traffic_token(sandbox_id))
        ):
            raise ResumeRefused(
                grpc.StatusCode.PERMISSION_DENIED, f"sandbox {sandbox_id} {CREDENTIALS_REFUSED}"
            )
        if (
            port == ENVD_PORT
            and spec.secure
            and not tokens_match(envd_token, plane.tokens.envd_token(sandbox_id))
        ):
            raise ResumeRefused(
                grpc.StatusCode.PERMISSION_DENIED, f"sandbox {sandbox_id} {CREDENTIALS_REFUSED}"
            )
        timeout_s = min(
            max(spec.auto_resume_timeout_s or MIN_AUTO_RESUME_S, MIN_AUTO_RESUME_S), team.max_length_s
        )
        try:
            live = await resume(plane, team, snapshot, timeout_s, memory=True)
        except ApiError as exc:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if exc.status == 429 else grpc.StatusCode.UNAVAILABLE
            raise ResumeRefused(code, exc.message) from exc
        _log.info("auto-resumed sandbox %s on %s for traffic to port %d", sandbox_id, live.record.node, port)
        return _node(plane, live.record.node, sandbox_id)


def _node(plane: ControlPlane, address: str, sandbox_id: str) -> NodeClient:
    node = plane.nodes.get(address)
    if node is None:
        raise ResumeRefused(
            grpc.StatusCode.NOT_FOUND, f"sandbox {sandbox_id} runs on an unknown node {address}"
        )
    return node


class ResumeService(proxy_pb2_grpc.SandboxServiceServicer):
    """``/proxy.SandboxService/ResumeSandbox`` over ``resume_for_traffic`` (grpc.aio)."""

    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane

    async def ResumeSandbox(
        self, request: proxy_pb2.SandboxResumeRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> proxy_pb2.SandboxResumeResponse:
        metadata = {
            key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)
        }
        port_text = metadata.get(PORT_METADATA, str(ENVD_PORT))
        if not port_text.isdigit():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"{PORT_METADATA} {port_text!r} is not a port"
            )
        try:
            node = await resume_for_traffic(
                self._plane,
                request.sandbox_id,
                int(port_text),
                metadata.get(TRAFFIC_TOKEN_METADATA),
                metadata.get(ENVD_TOKEN_METADATA),
            )
        except ResumeRefused as exc:
            await context.abort(exc.code, exc.message)
        except Exception as exc:  # a bug: one line to the caller, the traceback to the log
            _log.exception("ResumeSandbox %s failed", request.sandbox_id)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        return proxy_pb2.SandboxResumeResponse(orchestrator_ip=node.host)

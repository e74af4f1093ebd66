"""Pausing, named snapshots and forks: everything that turns a running sandbox into a build.

* **pause** (``POST /sandboxes/{id}/pause``, and the evictor for ``autoPause``): the snapshot
  row is written *before* the node's ``Pause``, as the original does, so an API that dies
  mid-pause still knows the build the node is writing. A failed pause puts the previous row
  back; the sandbox returns to running when its node still runs it (ember's choice: the
  original has no way back from pausing), else it is dropped.
* **snapshot** (``POST /sandboxes/{id}/snapshots``): ``Checkpoint`` into a new build (the
  sandbox keeps running), registered as a template of kind ``snapshot``; a name given again
  adds a build to the same snapshot template.
* **fork** (``POST /sandboxes/{id}/fork``): one ``Checkpoint`` of the parent, then ``count``
  Creates of that build with ``snapshot=true``, preferring the parent's node. Each child
  answers ``{"sandbox": ...}`` or ``{"error": ...}``. A paused parent forks from its snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import grpc

from ember.api.catalog import LiveSandbox, SandboxState
from ember.api.errors import ApiError, bad_request, sandbox_not_found
from ember.api.ids import check_alias, new_build_id, new_sandbox_id, new_template_id
from ember.api.listing import Cursor
from ember.api.nodes import NodeError
from ember.api.plane import ControlPlane, utcnow
from ember.api.records import Build, BuildStatus, SandboxSpec, SnapshotRecord, Team, Template, TemplateKind
from ember.api.requests import Body
from ember.api.sandboxes import DEFAULT_TIMEOUT_V1_S, check_timeout
from ember.api.store import StoreError
from ember.api.views import sandbox_json

_log = logging.getLogger(__name__)

MAX_FORK_COUNT = 100
DEFAULT_SNAPSHOT_LIMIT = 100

_REFUSALS = frozenset(
    {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED}
)


def _node_failure(action: str, sandbox_id: str, exc: NodeError) -> ApiError:
    if exc.code in _REFUSALS:
        return ApiError(400, f"Cannot {action} sandbox {sandbox_id}: {exc.details}")
    if exc.code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ApiError(503, f"Cannot {action} sandbox {sandbox_id} now, the node is busy: {exc.details}")
    return ApiError(500, f"Failed to {action} sandbox {sandbox_id}: {exc.details}")


# -- pause -----------------------------------------------------------------------------------------


async def pause(plane: ControlPlane, team: Team, sandbox_id: str, body: Body) -> None:
    """204 when paused; 409 when already paused or mid-transition; 404 when unknown."""
    memory = body.flag("memory")
    body.flag("requireHealthyGuest")  # checked for type; every ember pause needs a live guest anyway
    live = plane.running(plane.catalog.get(sandbox_id), team)
    if live is None:
        snapshot = await plane.store.get_snapshot(sandbox_id)
        if snapshot is not None and snapshot.spec.team_id == team.id:
            raise ApiError(409, f'Sandbox "{sandbox_id}" is already paused')
        raise sandbox_not_found(sandbox_id)
    if live.state is not SandboxState.RUNNING:
        raise ApiError(409, f"Sandbox \"{sandbox_id}\" cannot be paused while in '{live.state}' state")
    plane.catalog.transition(live, SandboxState.PAUSING)
    await pause_live(plane, live, filesystem_only=memory is False)


async def pause_live(plane: ControlPlane, live: LiveSandbox, filesystem_only: bool) -> SnapshotRecord:
    """Pause ``live`` (already PAUSING) into a new build; see the module docstring.

    Whatever fails, ``live`` ends running (the node still runs it) or gone (it does not).
    """
    record = live.record
    try:
        previous = await plane.store.get_snapshot(live.sandbox_id)
        template_id = previous.spec.template_id if previous is not None else new_template_id()
        build_id = new_build_id()
        pending = SnapshotRecord(
            sandbox_id=live.sandbox_id,
            spec=replace(record.spec, template_id=template_id, build_id=build_id),
            origin_node=record.node,
            started_at=record.started_at,
            paused_at=utcnow(),
            filesystem_only=filesystem_only,
        )
        await plane.store.put_snapshot(pending)
    except Exception:
        plane.catalog.back_to_running(live)
        raise
    node = plane.nodes.get(record.node)
    try:
        if node is None:
            raise NodeError(record.node, "Pause", grpc.StatusCode.UNAVAILABLE, "the node is not configured")
        answer = await node.pause(live.sandbox_id, template_id, build_id, filesystem_only)
    except Exception as exc:
        await _restore(plane, live.sandbox_id, previous)
        await _after_failure(plane, live)
        if isinstance(exc, NodeError):
            raise _node_failure("pause", live.sandbox_id, exc) from exc
        raise
    done = replace(
        pending, paused_at=utcnow(), scheduling_metadata=answer.scheduling_metadata.SerializeToString()
    )
    try:
        await plane.store.put_snapshot(done)
    except StoreError as exc:  # the pending row already names the build: only its metadata is lost
        _log.warning("recording the pause of %s failed: %s", live.sandbox_id, exc)
    await plane.forget(live)
    return done


async def _restore(plane: ControlPlane, sandbox_id: str, previous: SnapshotRecord | None) -> None:
    """Put back the snapshot row a failed pause replaced."""
    try:
        if previous is not None:
            await plane.store.put_snapshot(previous)
        else:
            await plane.store.delete_snapshot(sandbox_id)
    except StoreError as exc:
        _log.warning("restoring the snapshot row of %s failed: %s", sandbox_id, exc)


async def _after_failure(plane: ControlPlane, live: LiveSandbox) -> None:
    """Back to running when the node still runs the sandbox, else drop it."""
    node = plane.nodes.get(live.record.node)
    try:
        still = node is not None and live.sandbox_id in {item.sandbox_id for item in await node.list()}
    except NodeError:
        still = True  # cannot tell: keep it; the next node sync settles it
    if still:
        plane.catalog.back_to_running(live)
    else:
        await plane.forget(live)


# -- checkpoints: named snapshots and forks ------------------------------------------------------


async def _checkpoint(plane: ControlPlane, live: LiveSandbox, action: str) -> str:
    """A new build of the running ``live``, which keeps running; returns the build id."""
    if live.state is not SandboxState.RUNNING:
        raise ApiError(409, f"Cannot {action} sandbox \"{live.sandbox_id}\" while in '{live.state}' state")
    build_id = new_build_id()
    plane.catalog.transition(live, SandboxState.SNAPSHOTTING)
    try:
        node = plane.nodes.get(live.record.node)
        if node is None:
            raise NodeError(
                live.record.node, "Checkpoint", grpc.StatusCode.UNAVAILABLE, "the node is not configured"
            )
        await node.checkpoint(live.sandbox_id, build_id)
    except NodeError as exc:
        await _after_failure(plane, live)
        raise _node_failure(action, live.sandbox_id, exc) from exc
    finally:
        plane.catalog.back_to_running(live)  # no-op when the failure path dropped it
    return build_id


async def _source(plane: ControlPlane, team: Team, sandbox_id: str, action: str) -> tuple[SandboxSpec, str]:
    """The spec (its build the new checkpoint, or the paused build) and node to start copies from."""
    live = plane.running(plane.catalog.get(sandbox_id), team)
    if live is not None:
        build_id = await _checkpoint(plane, live, action)
        return replace(live.record.spec, build_id=build_id), live.record.node
    snapshot = await plane.store.get_snapshot(sandbox_id)
    if snapshot is None or snapshot.spec.team_id != team.id:
        raise sandbox_not_found(sandbox_id)
    return snapshot.spec, snapshot.origin_node


async def create_snapshot(plane: ControlPlane, team: Team, sandbox_id: str, body: Body) -> Template:
    """``POST /sandboxes/{id}/snapshots`` -> the snapshot template (201 ``{snapshotID, names}``)."""
    name = body.text("name")
    if body.flag("memory") is False:
        raise bad_request("filesystem-only snapshots are not supported: leave out memory or set it true")
    alias = check_alias(name) if name else None
    existing = await plane.store.find_template(alias) if alias else None
    if existing is not None and (existing.team_id != team.id or existing.kind is not TemplateKind.SNAPSHOT):
        raise ApiError(409, f'The name "{alias}" is taken by a template that is not a snapshot')
    spec, _ = await _source(plane, team, sandbox_id, "snapshot")
    now = utcnow()
    template_id = existing.id if existing is not None else new_template_id()
    build = Build(
        build_id=spec.build_id,
        template_id=template_id,
        status=BuildStatus.READY,
        vcpu=spec.vcpu,
        ram_mb=spec.ram_mb,
        disk_mb=spec.disk_mb,
        envd_version=spec.envd_version,
        created_at=now,
        kernel_version=spec.kernel_version,
        firecracker_version=spec.firecracker_version,
        finished_at=now,
    )
    if existing is not None:
        await plane.store.add_build(build, make_current=True)
        return replace(existing, build_id=build.build_id, updated_at=now)
    template = Template(
        id=template_id,
        team_id=team.id,
        kind=TemplateKind.SNAPSHOT,
        public=False,
        build_id=build.build_id,
        created_at=now,
        updated_at=now,
        aliases=(alias,) if alias else (),
        source_sandbox_id=sandbox_id,
    )
    await plane.store.create_template(template, build)
    return template


async def fork(plane: ControlPlane, team: Team, sandbox_id: str, body: Body) -> list[dict[str, Any]]:
    timeout_s = check_timeout(_default(body.integer("timeout"), DEFAULT_TIMEOUT_V1_S), team)
    count = _default(body.integer("count"), 1)
    if not 1 <= count <= MAX_FORK_COUNT:
        raise bad_request(f"count must be between 1 and {MAX_FORK_COUNT}")
    spec, origin = await _source(plane, team, sandbox_id, "fork")
    child_spec = replace(spec, auto_resume_timeout_s=timeout_s)
    return list(
        await asyncio.gather(*(_fork_one(plane, team, child_spec, timeout_s, origin) for _ in range(count)))
    )


async def _fork_one(
    plane: ControlPlane, team: Team, spec: SandboxSpec, timeout_s: int, origin: str
) -> dict[str, Any]:
    child_id = new_sandbox_id()
    try:
        await plane.start(team, child_id, spec, timeout_s, resume=True, preferred_node=origin)
    except ApiError as exc:
        _log.info("fork child %s did not start: %s", child_id, exc.message)
        return {"error": exc.body()}
    return {"sandbox": sandbox_json(child_id, spec, plane.tokens, plane.domain)}


def _default(value: int | None, default: int) -> int:
    return default if value is None else value


# -- listing -----------------------------------------------------------------------------------------


async def list_snapshots(
    plane: ControlPlane, team: Team, sandbox_id: str | None, name: str | None, limit: int, token: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """``GET /snapshots``: the team's snapshot templates, newest first, in pages."""
    if not 1 <= limit <= DEFAULT_SNAPSHOT_LIMIT:
        raise bad_request(f"limit must be between 1 and {DEFAULT_SNAPSHOT_LIMIT}")
    cursor = Cursor.decode(token) if token else None
    templates = [
        template
        for template in await plane.store.list_templates(team.id, TemplateKind.SNAPSHOT)
        if (sandbox_id is None or template.source_sandbox_id == sandbox_id)
        and (name is None or name.strip().lower() in template.aliases)
    ]
    templates.sort(key=lambda template: (template.created_at, template.id), reverse=True)
    if cursor is not None:
        mark = (cursor.started_at, cursor.item_id)
        templates = [template for template in templates if (template.created_at, template.id) < mark]
    page = templates[:limit]
    more = len(templates) > limit
    next_token = Cursor(page[-1].created_at, page[-1].id, False).encode() if more and page else None
    return [{"snapshotID": template.id, "names": list(template.aliases)} for template in page], next_token

"""Template builds through the API: E2B's build flow, driving the nodes' ``TemplateService``.

The SDK's ``Template.build(template, "name")`` makes these calls, in this order:

1. ``POST /v3/templates`` (``request_build``): the name's template (created on first use)
   gets a new build, *waiting*. Its tags are the name's tag (``default`` when the name has
   none) plus the body's ``tags``; once ready the build takes them, and ``default`` makes it
   the template's current build (what ``Sandbox.create("name")`` starts). Answers 202.
2. ``GET /templates/{id}/files/{hash}`` (``file_upload``), once per COPY step: the node that
   will build is chosen now and recorded on the waiting build; its ``InitLayerFileUpload``
   says whether the files are stored already, else gives the URL of that node's own upload
   endpoint, where the SDK PUTs the tar. Answers 201.
3. ``POST /v2/templates/{id}/builds/{buildID}`` (``start_build``): waiting -> building (in the
   store first, so a restarted API knows the node), then ``TemplateCreate`` on that node
   (another builder if it cannot take it). ``fromTemplate`` is resolved to that template's
   ready build, whose vCPUs and memory the build takes (it resumes that build's snapshot).
   Answers 202 with no body.
4. ``GET /templates/{id}/builds/{buildID}/status`` (``build_status``), every 0.2 s: the
   node's ``TemplateBuildStatus`` from the SDK's log offset. A Completed build is recorded
   ready with the node's metadata (envd, kernel and Firecracker versions, rootfs size) and
   takes its tags; a Failed one is recorded with the node's reason and step. After a terminal
   status the node is still asked for the rest of the log (the SDK drains it).

``BuildWatcher`` follows every building build in the background too, so a build finishes in
the store even when nobody polls, and an API restart picks the building ones up again
(``resume``). A build whose node forgot it (the node restarted) or that is no longer an
``-orchestrator``, or whose node stays unreachable for ``NODE_LOST_AFTER_S``, ends as error
with that reason.

Cache scope: the API passes the team id as ``cacheScope`` to both InitLayerFileUpload and
TemplateCreate, so the uploaded files and the layer cache are the team's, and the two
calls always agree on where the files are.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from ember.api.errors import ApiError, bad_request, template_not_found
from ember.api.ids import check_alias, new_build_id, new_template_id, parse_template_ref
from ember.api.nodes import NodeClient, NodeError
from ember.api.placement import choose
from ember.api.plane import DEFAULT_TAG, ControlPlane, utcnow
from ember.api.records import Build, BuildStatus, Team, Template, TemplateKind
from ember.api.requests import Body
from ember.api.store import StoreConflict
from ember.api.views import rfc3339
from ember.rpc import template_manager_pb2 as tpb

_log = logging.getLogger(__name__)

DEFAULT_BUILD_VCPU = 2
DEFAULT_BUILD_RAM_MB = 1024
DEFAULT_BUILD_DISK_MB = 1024
MIN_RAM_MB = 128
STATUS_LOG_LIMIT = 100
"""The most log entries one status answer carries (the SDK keeps polling for the rest)."""
LOGS_LIMIT = 100
WATCH_INTERVAL_S = 1.0
NODE_LOST_AFTER_S = 300.0
MAX_START_ATTEMPTS = 3
_ALL_LOGS = 2**31 - 1
"""An offset past any log: the watcher asks for the state only."""

_FILES_HASH = re.compile(r"[0-9a-f]{64}")
_TAG = re.compile(r"[a-z0-9\-_.]+")
_LEVELS = {"debug": tpb.Debug, "info": tpb.Info, "warn": tpb.Warn, "error": tpb.Error}
_LEVEL_NAMES = {value: name for name, value in _LEVELS.items()}
_STEP_TYPES = frozenset({"RUN", "COPY", "ENV", "WORKDIR", "USER"})
_REFUSED = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.FAILED_PRECONDITION}
)
_TRY_ANOTHER = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


# -- POST /v3/templates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildRequest:
    """``TemplateBuildRequestV3``, checked: the template's name, the build's tags and machine."""

    name: str
    tags: tuple[str, ...]
    vcpu: int
    ram_mb: int

    @classmethod
    def parse(cls, body: Body) -> BuildRequest:
        text = body.text("name") or body.text("alias")  # alias: the deprecated spelling
        body.text("teamID")  # deprecated; checked for type only: the API key names the team
        if not text or not text.strip():
            raise bad_request('Invalid request body: "name" is required')
        ref = parse_template_ref(text)
        name = check_alias(ref.name)
        tags = [ref.tag or DEFAULT_TAG, *(_tag(tag) for tag in body.texts("tags") or ())]
        vcpu = body.integer("cpuCount")
        ram_mb = body.integer("memoryMB")
        free_disk = body.integer("minFreeDiskMb")
        if vcpu is not None and vcpu < 1:
            raise bad_request("cpuCount must be at least 1")
        if ram_mb is not None and ram_mb < MIN_RAM_MB:
            raise bad_request(f"memoryMB must be at least {MIN_RAM_MB}")
        if free_disk is not None and free_disk < 0:
            raise bad_request("minFreeDiskMb must not be negative")
        return cls(
            name=name,
            tags=tuple(dict.fromkeys(tags)),
            vcpu=DEFAULT_BUILD_VCPU if vcpu is None else vcpu,
            ram_mb=DEFAULT_BUILD_RAM_MB if ram_mb is None else ram_mb,
        )


def _tag(text: str) -> str:
    tag = text.strip().lower()
    if not _TAG.fullmatch(tag):
        raise bad_request(f'Invalid tag "{text}": use lower-case letters, digits, "-", "_" and "."')
    return tag


async def request_build(plane: ControlPlane, team: Team, body: Body) -> dict[str, Any]:
    """``POST /v3/templates`` -> ``TemplateRequestResponseV3`` (see the module docstring)."""
    asked = BuildRequest.parse(body)
    now = utcnow()
    build = Build(
        build_id=new_build_id(),
        template_id="",
        status=BuildStatus.WAITING,
        vcpu=asked.vcpu,
        ram_mb=asked.ram_mb,
        disk_mb=DEFAULT_BUILD_DISK_MB,
        envd_version="",
        created_at=now,
        tags=asked.tags,
    )
    existing = await plane.store.find_template(asked.name)
    if existing is None:
        template = Template(
            id=new_template_id(),
            team_id=team.id,
            kind=TemplateKind.TEMPLATE,
            public=False,
            build_id=None,
            created_at=now,
            updated_at=now,
            aliases=(asked.name,),
        )
        try:
            await plane.store.create_template(template, dataclasses.replace(build, template_id=template.id))
        except StoreConflict:
            raise ApiError(
                409, f'Template "{asked.name}" is being created by another request: retry'
            ) from None
    else:
        template = existing
        if template.team_id != team.id:
            raise ApiError(403, f'Template "{asked.name}" belongs to another team: pick another name')
        if template.kind is not TemplateKind.TEMPLATE:
            raise ApiError(409, f'The name "{asked.name}" is taken by a snapshot, not a template')
        await _supersede_waiting(plane, template, build.build_id)
        await plane.store.add_build(dataclasses.replace(build, template_id=template.id), make_current=False)
    _log.info("template %s (%s): build %s requested", asked.name, template.id, build.build_id)
    return {
        "templateID": template.id,
        "buildID": build.build_id,
        "public": template.public,
        "names": list(template.aliases),
        "tags": list(asked.tags),
        "aliases": list(template.aliases),
    }


async def _supersede_waiting(plane: ControlPlane, template: Template, newer: str) -> None:
    """Builds requested but never started are dropped for a new request of the same template."""
    for build in await plane.store.list_builds(template.id):
        if build.status is BuildStatus.WAITING:
            await plane.store.fail_build(
                build.build_id, utcnow(), f"superseded by build {newer}, requested later", None
            )


# -- lookups -------------------------------------------------------------------------------------


async def own_template(plane: ControlPlane, team: Team, reference: str) -> Template:
    template = await plane.store.find_template(parse_template_ref(reference).name)
    if template is None or template.team_id != team.id:
        raise template_not_found(reference)
    return template


async def own_build(plane: ControlPlane, team: Team, reference: str, build_id: str) -> tuple[Template, Build]:
    template = await own_template(plane, team, reference)
    build = await plane.store.get_build(build_id.strip().lower())
    if build is None or build.template_id != template.id:
        raise ApiError(404, f'Build "{build_id}" of template "{reference}" not found')
    return template, build


def _builder(plane: ControlPlane, preferred: str | None, vcpu: int, excluded: set[str]) -> NodeClient:
    """The node to build on: ``preferred`` while it builds templates, else the least loaded builder."""
    node = plane.nodes.get(preferred) if preferred else None
    if node is not None and node.builds_templates and node.address not in excluded:
        return node
    builders = [node for node in plane.nodes.nodes.values() if node.builds_templates]
    chosen = choose(builders, vcpu, excluded)
    if chosen is None:
        raise ApiError(503, "No healthy template builder node: every node is busy, down or not a builder")
    return chosen


def _node_failure(what: str, exc: NodeError) -> ApiError:
    if exc.code in _REFUSED:
        return ApiError(400, f"{what}: {exc.details}")
    if exc.code in _TRY_ANOTHER or exc.code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return ApiError(503, f"{what}: the node {exc.node} cannot take it now: {exc.details}")
    return ApiError(500, f"{what}: the node {exc.node} failed: {exc.details}")


# -- GET /templates/{id}/files/{hash} ----------------------------------------------------------


async def file_upload(plane: ControlPlane, team: Team, reference: str, files_hash: str) -> dict[str, Any]:
    """``TemplateBuildFileUpload``: ``present``, else the node's upload ``url`` (see step 2)."""
    if not _FILES_HASH.fullmatch(files_hash):
        raise bad_request(f'Invalid files hash "{files_hash}": expected 64 lower-case hex digits (SHA-256)')
    template = await own_template(plane, team, reference)
    waiting = [b for b in await plane.store.list_builds(template.id) if b.status is BuildStatus.WAITING]
    build = waiting[-1] if waiting else None
    node = _builder(plane, build.node if build else None, build.vcpu if build else DEFAULT_BUILD_VCPU, set())
    if build is not None and build.node != node.address:
        await plane.store.update_build(dataclasses.replace(build, node=node.address))
    try:
        answer = await node.init_layer_upload(template.id, files_hash, team.id)
    except NodeError as exc:
        raise _node_failure(f"Preparing the upload of files {files_hash}", exc) from exc
    body: dict[str, Any] = {"present": answer.present}
    if not answer.present and answer.HasField("url"):
        body["url"] = answer.url
    return body


# -- POST /v2/templates/{id}/builds/{buildID} ----------------------------------------------------


@dataclass(frozen=True)
class BuildStart:
    """``TemplateBuildStartV2``, checked: the source, the steps, the start and ready commands."""

    from_image: str | None
    from_template: str | None
    registry: tpb.FromImageRegistry | None
    force: bool
    steps: tuple[tpb.TemplateStep, ...]
    start_cmd: str
    ready_cmd: str

    @classmethod
    def parse(cls, body: Body) -> BuildStart:
        from_image = body.text("fromImage") or None
        from_template = body.text("fromTemplate") or None
        if (from_image is None) == (from_template is None):
            raise bad_request("Exactly one of fromImage or fromTemplate must be given and non-empty")
        registry_body = body.child("fromImageRegistry")
        if registry_body is not None and from_image is None:
            raise bad_request("fromImageRegistry only goes with fromImage")
        steps = []
        for index, raw in enumerate(body.array("steps") or ()):
            if not isinstance(raw, dict):
                raise bad_request(f'Invalid request body: "steps[{index}]" must be an object')
            steps.append(_step(Body(raw, f"steps[{index}]."), index))
        return cls(
            from_image=from_image,
            from_template=from_template,
            registry=_registry(registry_body) if registry_body is not None else None,
            force=bool(body.flag("force")),
            steps=tuple(steps),
            start_cmd=body.text("startCmd") or "",
            ready_cmd=body.text("readyCmd") or "",
        )


def _step(body: Body, index: int) -> tpb.TemplateStep:
    kind = (body.text("type", required=True) or "").upper()
    if kind not in _STEP_TYPES:
        raise bad_request(
            f"steps[{index}]: unknown step type {kind!r}: use one of {', '.join(sorted(_STEP_TYPES))}"
        )
    step = tpb.TemplateStep(type=kind, args=body.texts("args") or [])
    force = body.flag("force")
    if force is not None:
        step.force = force
    files_hash = body.text("filesHash")
    if files_hash:
        step.filesHash = files_hash
    if kind == "COPY" and not (files_hash and _FILES_HASH.fullmatch(files_hash)):
        raise bad_request(f"steps[{index}]: a COPY step needs the filesHash of its uploaded files")
    return step


def _registry(body: Body) -> tpb.FromImageRegistry:
    kind = body.text("type", required=True)
    if kind == "aws":
        return tpb.FromImageRegistry(
            aws=tpb.AWSRegistry(
                awsAccessKeyId=body.text("awsAccessKeyId", required=True) or "",
                awsSecretAccessKey=body.text("awsSecretAccessKey", required=True) or "",
                awsRegion=body.text("awsRegion", required=True) or "",
            )
        )
    if kind == "gcp":
        return tpb.FromImageRegistry(
            gcp=tpb.GCPRegistry(serviceAccountJson=body.text("serviceAccountJson", required=True) or "")
        )
    if kind == "registry":
        return tpb.FromImageRegistry(
            general=tpb.GeneralRegistry(
                username=body.text("username", required=True) or "",
                password=body.text("password", required=True) or "",
            )
        )
    raise bad_request(f'fromImageRegistry.type must be "aws", "gcp" or "registry", not {kind!r}')


async def start_build(plane: ControlPlane, team: Team, reference: str, build_id: str, body: Body) -> None:
    """Start a waiting build on a builder node (see step 3); 202 once the node took it."""
    asked = BuildStart.parse(body)
    template, build = await own_build(plane, team, reference, build_id)
    if build.status is not BuildStatus.WAITING:
        raise ApiError(409, f"Build {build.build_id} was started already: it is {build.status}")
    resolved: tuple[Template, Build] | None = None
    if asked.from_template is not None:
        resolved = await plane.resolve_template(team, asked.from_template)
        build = await _inherit_machine(plane, build, resolved[1])
    config = tpb.TemplateConfig(
        templateID=template.id,
        buildID=build.build_id,
        memoryMB=build.ram_mb,
        vCpuCount=build.vcpu,
        diskSizeMB=build.disk_mb,
        startCommand=asked.start_cmd,
        readyCommand=asked.ready_cmd,
        force=asked.force,
        steps=list(asked.steps),
        teamID=team.id,
    )
    from_build: str | None = None
    if resolved is not None:
        source, source_build = resolved
        from_build = source_build.build_id
        config.fromTemplate.CopyFrom(
            tpb.FromTemplateConfig(
                alias=source.aliases[0] if source.aliases else source.id, buildID=from_build
            )
        )
    else:
        config.fromImage = asked.from_image or ""
        if asked.registry is not None:
            config.fromImageRegistry.CopyFrom(asked.registry)
    request = tpb.TemplateCreateRequest(template=config, cacheScope=team.id)
    excluded: set[str] = set()
    preferred = build.node
    for attempt in range(MAX_START_ATTEMPTS):
        node = _builder(plane, preferred, build.vcpu, excluded)
        if not await plane.store.start_build(build.build_id, node.address, from_build):
            raise ApiError(409, f"Build {build.build_id} was started already by another request")
        try:
            await node.template_create(request)
        except NodeError as exc:
            if exc.code is grpc.StatusCode.ALREADY_EXISTS:
                # an earlier attempt reached the node after all (its answer was lost): it builds
                _log.info("build %s: %s already runs it", build.build_id, node.address)
            else:
                await plane.store.update_build(build)  # back to waiting, as it was
                excluded.add(node.address)
                preferred = None
                if exc.code in _TRY_ANOTHER and attempt + 1 < MAX_START_ATTEMPTS:
                    _log.info(
                        "build %s: node %s cannot take it (%s): trying another",
                        build.build_id,
                        node.address,
                        exc,
                    )
                    continue
                raise _node_failure(f"Starting build {build.build_id}", exc) from exc
        _log.info(
            "template %s: build %s started on %s (%s)",
            template.id,
            build.build_id,
            node.address,
            f"from template build {from_build}" if from_build else f"from image {asked.from_image}",
        )
        started = dataclasses.replace(
            build, status=BuildStatus.BUILDING, node=node.address, from_build_id=from_build
        )
        plane.watch_build(started)
        return
    raise AssertionError("unreachable: the last attempt raises")


async def _inherit_machine(plane: ControlPlane, build: Build, source: Build) -> Build:
    """``build`` (waiting) with the vCPUs and memory of ``source``, the build it starts from.

    A build from a template resumes that template's snapshot: its guest has the source's
    vCPUs and memory whatever the request asked (a snapshot resumes only on the machine it was
    taken on), and every sandbox of it is placed with them. Recorded with the request's
    (2 / 1024 by default), a sandbox of a build from the 512 MiB ``base`` is refused by the node.
    """
    if (build.vcpu, build.ram_mb) == (source.vcpu, source.ram_mb):
        return build
    _log.info(
        "build %s: %d vCPU / %d MiB asked, %d / %d MiB taken from its source build %s",
        build.build_id,
        build.vcpu,
        build.ram_mb,
        source.vcpu,
        source.ram_mb,
        source.build_id,
    )
    inherited = dataclasses.replace(build, vcpu=source.vcpu, ram_mb=source.ram_mb)
    await plane.store.update_build(inherited)
    return inherited


# -- status and logs -------------------------------------------------------------------------------


def _entry(entry: tpb.TemplateBuildLogEntry) -> dict[str, Any]:
    body: dict[str, Any] = {
        "timestamp": rfc3339(entry.timestamp.ToDatetime(tzinfo=dt.UTC)),
        "message": entry.message,
        "level": _LEVEL_NAMES.get(entry.level, "info"),
    }
    step = entry.fields.get("step")
    if step:
        body["step"] = step
    return body


def parse_level(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    level = _LEVELS.get(text.lower())
    if level is None:
        raise bad_request(f'Invalid query: "level" must be one of {", ".join(_LEVELS)}, got {text!r}')
    return level


async def settle(plane: ControlPlane, build: Build, answer: tpb.TemplateBuildStatusResponse) -> Build:
    """Record what the node says of a building build: ready (with its metadata) or error."""
    if build.status is not BuildStatus.BUILDING:
        return build
    if answer.status == tpb.Completed:
        metadata = answer.metadata
        ready = await plane.store.finish_build(
            build.build_id,
            utcnow(),
            envd_version=metadata.envdVersionKey,
            kernel_version=metadata.kernelVersion,
            firecracker_version=metadata.firecrackerVersion,
            disk_mb=metadata.rootfsSizeKey or None,
        )
        if ready is not None:
            _log.info(
                "template %s: build %s is ready (envd %s, tags %s)",
                build.template_id,
                build.build_id,
                ready.envd_version or "?",
                ", ".join(ready.tags) or "none",
            )
            return ready
    elif answer.status == tpb.Failed:
        reason = answer.reason.message if answer.HasField("reason") else "the build failed"
        step = answer.reason.step if answer.HasField("reason") and answer.reason.HasField("step") else None
        await plane.store.fail_build(build.build_id, utcnow(), reason, step)
        _log.info(
            "template %s: build %s failed at step %s: %s", build.template_id, build.build_id, step, reason
        )
    else:
        return build
    return await plane.store.get_build(build.build_id) or build


async def _lost(plane: ControlPlane, build: Build, why: str) -> Build:
    _log.warning("template %s: build %s ended: %s", build.template_id, build.build_id, why)
    await plane.store.fail_build(build.build_id, utcnow(), why, None)
    return await plane.store.get_build(build.build_id) or build


def _node_of(plane: ControlPlane, build: Build) -> NodeClient | None:
    return plane.nodes.get(build.node) if build.node else None


async def _ask(
    plane: ControlPlane, build: Build, request: tpb.TemplateStatusRequest
) -> tuple[Build, tpb.TemplateBuildStatusResponse | None]:
    """The node's answer for ``build`` (None when it cannot give one), the build settled by it."""
    node = _node_of(plane, build)
    if node is None:
        if build.status is BuildStatus.BUILDING:
            why = f"its node {build.node} is no longer one of the API's -orchestrator nodes"
            return await _lost(plane, build, f"the build was lost: {why}"), None
        return build, None
    try:
        answer = await node.template_status(request)
    except NodeError as exc:
        if exc.code is grpc.StatusCode.NOT_FOUND and build.status is BuildStatus.BUILDING:
            why = f"the node {node.address} no longer knows it (it restarted?): build the template again"
            return await _lost(plane, build, f"the build was lost: {why}"), None
        if not build.finished:  # a finished build's node may forget it: only its log is gone
            _log.info("asking %s about build %s failed: %s", node.address, build.build_id, exc)
        return build, None
    return await settle(plane, build, answer), answer


def _reason(build: Build) -> dict[str, Any]:
    reason: dict[str, Any] = {"message": build.reason or "the build failed"}
    if build.reason_step:
        reason["step"] = build.reason_step
    return reason


async def build_status(
    plane: ControlPlane,
    team: Team,
    reference: str,
    build_id: str,
    offset: int,
    limit: int,
    level: int | None,
) -> dict[str, Any]:
    """``TemplateBuildInfo``: the state, the log from ``offset`` (at most ``limit``), the reason."""
    if offset < 0:
        raise bad_request("logsOffset must not be negative")
    if not 0 <= limit <= STATUS_LOG_LIMIT:
        raise bad_request(f"limit must be between 0 and {STATUS_LOG_LIMIT}")
    template, build = await own_build(plane, team, reference, build_id)
    entries: list[dict[str, Any]] = []
    if build.status is not BuildStatus.WAITING:
        request = tpb.TemplateStatusRequest(
            templateID=template.id, buildID=build.build_id, offset=min(offset, _ALL_LOGS), limit=limit
        )
        if level is not None:
            request.level = level  # type: ignore[assignment]
        build, answer = await _ask(plane, build, request)
        if answer is not None and limit:
            entries = [_entry(entry) for entry in answer.logEntries]
    body: dict[str, Any] = {
        "logs": [entry["message"] for entry in entries],
        "logEntries": entries,
        "templateID": template.id,
        "buildID": build.build_id,
        "status": str(build.status),
    }
    if build.status is BuildStatus.ERROR:
        body["reason"] = _reason(build)
    return body


async def build_logs(
    plane: ControlPlane,
    team: Team,
    reference: str,
    build_id: str,
    cursor: int | None,
    limit: int,
    direction: str,
    level: int | None,
) -> dict[str, Any]:
    """``TemplateBuildLogsResponse``: entries from the ``cursor`` (ms since the epoch), forward
    (oldest first, at or after it) or backward (newest first, at or before it)."""
    if not 0 <= limit <= LOGS_LIMIT:
        raise bad_request(f"limit must be between 0 and {LOGS_LIMIT}")
    if direction not in ("forward", "backward"):
        raise bad_request(f'Invalid query: "direction" must be forward or backward, got {direction!r}')
    template, build = await own_build(plane, team, reference, build_id)
    if build.status is BuildStatus.WAITING:
        return {"logs": []}
    request = tpb.TemplateStatusRequest(
        templateID=template.id, buildID=build.build_id, offset=0, limit=2**32 - 1
    )
    if level is not None:
        request.level = level  # type: ignore[assignment]
    _, answer = await _ask(plane, build, request)
    if answer is None:
        return {"logs": []}
    stamped = [(entry.timestamp.ToMilliseconds(), entry) for entry in answer.logEntries]
    if direction == "forward":
        start = 0 if cursor is None else cursor
        chosen = [entry for stamp, entry in stamped if stamp >= start]
    else:
        end = cursor if cursor is not None else int(time.time() * 1000)
        chosen = [entry for stamp, entry in reversed(stamped) if stamp <= end]
    return {"logs": [_entry(entry) for entry in chosen[:limit]]}


async def cancel_unfinished(plane: ControlPlane, builds: Sequence[Build]) -> None:
    """Tell the nodes of waiting/building builds to stop and forget them (a template deleted)."""
    for build in builds:
        node = _node_of(plane, build)
        if build.finished or node is None or build.status is BuildStatus.WAITING:
            continue
        try:
            await node.template_delete(build.template_id, build.build_id)
            _log.info("build %s cancelled on %s", build.build_id, node.address)
        except NodeError as exc:
            _log.warning("cancelling build %s on %s failed: %s", build.build_id, node.address, exc)


# -- the watcher -------------------------------------------------------------------------------------


class BuildWatcher:
    """Follows building builds until ready or error (see the module docstring)."""

    def __init__(
        self,
        plane: ControlPlane,
        interval_s: float = WATCH_INTERVAL_S,
        lost_after_s: float = NODE_LOST_AFTER_S,
    ) -> None:
        self._plane = plane
        self.interval_s = interval_s
        self.lost_after_s = lost_after_s
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def watch(self, build: Build) -> None:
        if build.build_id in self._tasks or build.finished:
            return
        task = asyncio.get_running_loop().create_task(
            self._follow(build.build_id), name=f"ember-build-{build.build_id}"
        )
        self._tasks[build.build_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(build.build_id, None))

    async def resume(self) -> int:
        """Follow every build the store has as building (an API start); returns how many."""
        building = await self._plane.store.builds_with_status([BuildStatus.BUILDING])
        for build in building:
            self.watch(build)
        return len(building)

    @property
    def watching(self) -> int:
        return len(self._tasks)

    async def _follow(self, build_id: str) -> None:
        plane = self._plane
        unreachable_since: float | None = None
        while True:
            try:
                build = await plane.store.get_build(build_id)
                if build is None or build.finished:
                    return
                request = tpb.TemplateStatusRequest(
                    templateID=build.template_id, buildID=build.build_id, offset=_ALL_LOGS, limit=1
                )
                build, answer = await _ask(plane, build, request)
                if build.finished:
                    return
                if answer is None:
                    now = time.monotonic()
                    unreachable_since = unreachable_since if unreachable_since is not None else now
                    if now - unreachable_since > self.lost_after_s:
                        await _lost(
                            plane,
                            build,
                            f"the build was lost: its node {build.node} did not answer for "
                            f"{self.lost_after_s:.0f} s",
                        )
                        return
                else:
                    unreachable_since = None
            except Exception:
                _log.exception("following build %s failed; trying again", build_id)
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

"""The sandbox endpoints' logic: create, connect/resume, kill, timeout, refresh, get, metrics, network.

Each function takes the team the API key acts for and the parsed request, and returns
what the handler renders; refusals are ApiErrors with the original's statuses
(``handlers/sandbox_*.go``). Pausing, snapshots and forks are in ``snapshots``.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from ember.api.catalog import LiveSandbox, SandboxState
from ember.api.errors import (
    STILL_TRANSITIONING,
    TIMEOUT_NOT_POSITIVE,
    ApiError,
    bad_request,
    sandbox_not_found,
    timeout_too_long,
)
from ember.api.ids import new_sandbox_id
from ember.api.network import egress_config, parse_network, parse_update
from ember.api.nodes import NodeError
from ember.api.plane import ControlPlane, utcnow
from ember.api.records import SandboxSpec, SnapshotRecord, Team
from ember.api.requests import Body
from ember.api.views import rfc3339
from ember.traffic.routing import ENVD_PORT, SANDBOX_ID_HEADER, SANDBOX_PORT_HEADER

_log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_V2_S = 300
DEFAULT_TIMEOUT_V1_S = 15
DEFAULT_REFRESH_S = 15
MAX_REFRESH_S = 3600
SECURE_MIN_ENVD_TEXT = "0.2.0"
SECURE_MIN_ENVD = (0, 2, 0)
TRANSITION_WAIT_S = 60.0
"""How long connect, kill and the edge wait for a pause or snapshot in progress, per attempt."""
TRANSITION_ATTEMPTS = 3
METRICS_TIMEOUT_S = 10.0


def check_timeout(timeout_s: int, team: Team) -> int:
    if timeout_s <= 0:
        raise bad_request(TIMEOUT_NOT_POSITIVE)
    if timeout_s > team.max_length_s:
        raise timeout_too_long(team.max_length_hours)
    return timeout_s


# -- create ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewSandbox:
    """``NewSandboxV2`` (v2) or ``NewSandbox`` (v1, with ``secure``), checked."""

    template: str
    timeout_s: int | None
    auto_pause: bool
    auto_pause_memory: bool | None
    auto_resume: bool
    secure: bool
    allow_internet_access: bool | None
    network: dict[str, Any]
    metadata: dict[str, str]
    env_vars: dict[str, str]

    @classmethod
    def parse(cls, body: Body, v1: bool) -> NewSandbox:
        auto_resume = body.child("autoResume")
        for unsupported in ("mcp", "iam"):
            if body.present(unsupported):
                raise bad_request(f'"{unsupported}" is not supported by this control plane yet')
        if body.array("volumeMounts"):
            raise bad_request("volume mounts are not supported by this control plane yet")
        return cls(
            template=body.text("templateID", required=True) or "",
            timeout_s=body.integer("timeout"),
            auto_pause=bool(body.flag("autoPause")),
            auto_pause_memory=body.flag("autoPauseMemory"),
            auto_resume=bool(auto_resume.flag("enabled", required=True))
            if auto_resume is not None
            else False,
            secure=bool(body.flag("secure")) if v1 else True,
            allow_internet_access=body.flag("allow_internet_access"),
            network=parse_network(body.child("network")),
            metadata=body.text_map("metadata") or {},
            env_vars=body.text_map("envVars") or {},
        )


async def create(plane: ControlPlane, team: Team, body: Body, v1: bool) -> LiveSandbox:
    """``POST /sandboxes`` (v1) and ``POST /v2/sandboxes``."""
    asked = NewSandbox.parse(body, v1)
    timeout_s = check_timeout(
        asked.timeout_s
        if asked.timeout_s is not None
        else (DEFAULT_TIMEOUT_V1_S if v1 else DEFAULT_TIMEOUT_V2_S),
        team,
    )
    filesystem_only = asked.auto_pause_memory is False
    if filesystem_only and not asked.auto_pause:
        raise bad_request("autoPauseMemory can only be false when autoPause is true")
    if filesystem_only and asked.auto_resume:
        raise bad_request(
            "autoResume cannot be enabled with autoPauseMemory false: a filesystem-only snapshot "
            "must be resumed explicitly"
        )
    if not asked.network.get("allowPublicTraffic", True) and not asked.secure:
        raise bad_request("allowPublicTraffic false requires a secure sandbox: set secure to true")
    template, build = await plane.resolve_template(team, asked.template)
    if asked.secure and _envd_older_than(build.envd_version, SECURE_MIN_ENVD):
        raise bad_request(
            f"secure sandboxes need envd {SECURE_MIN_ENVD_TEXT} or newer; template {template.id} has "
            f"{build.envd_version}: rebuild it"
        )
    reference = asked.template.strip().lower()
    spec = SandboxSpec(
        team_id=team.id,
        template_id=template.id,
        base_template_id=template.id,
        build_id=build.build_id,
        vcpu=build.vcpu,
        ram_mb=build.ram_mb,
        disk_mb=build.disk_mb,
        envd_version=build.envd_version,
        kernel_version=build.kernel_version,
        firecracker_version=build.firecracker_version,
        max_length_hours=team.max_length_hours,
        alias=reference
        if reference in template.aliases
        else (template.aliases[0] if template.aliases else None),
        metadata=asked.metadata,
        secure=asked.secure,
        allow_internet_access=asked.allow_internet_access,
        network=asked.network,
        auto_pause=asked.auto_pause,
        auto_pause_filesystem_only=filesystem_only,
        auto_resume=asked.auto_resume,
        auto_resume_timeout_s=timeout_s,
    )
    live = await plane.start(team, new_sandbox_id(), spec, timeout_s, env_vars=asked.env_vars)
    try:
        await plane.store.record_spawn(template.id, utcnow())
    except Exception:  # a counter: never fail a started sandbox over it
        _log.warning("counting a spawn of template %s failed", template.id, exc_info=True)
    return live


def _envd_older_than(version: str, minimum: tuple[int, ...]) -> bool:
    """``version`` (``0.5.4``, ``v1.0.0``) sorts before ``minimum``; an unreadable one does not."""
    parts = version.strip().removeprefix("v").split("-")[0].split(".")
    if not all(part.isdigit() for part in parts):
        return False
    return tuple(int(part) for part in parts) < minimum


# -- connect and resume --------------------------------------------------------------------------


async def connect(
    plane: ControlPlane, team: Team, sandbox_id: str, timeout_s: int, memory: bool | None
) -> tuple[bool, LiveSandbox]:
    """``POST /v2/sandboxes/{id}/connect`` and v1: (resumed?, sandbox). Running: extend only (200);
    paused: resume on its origin node (201); killing: 409; pausing or snapshotting: wait."""
    check_timeout(timeout_s, team)
    for _ in range(TRANSITION_ATTEMPTS):
        live = plane.running(plane.catalog.get(sandbox_id), team)
        if live is not None:
            if live.state is SandboxState.RUNNING:
                await plane.extend(live, timeout_s, allow_shorter=False)
                return False, live
            await plane.catalog.wait_settled(live, TRANSITION_WAIT_S)
            continue
        killing = plane.catalog.get(sandbox_id)
        if killing is not None and killing.team_id == team.id:
            raise ApiError(409, f'Sandbox "{sandbox_id}" is being killed')
        async with plane.catalog.lock(sandbox_id):
            if plane.catalog.get(sandbox_id) is not None:
                continue  # resumed by another request meanwhile
            snapshot = await _own_snapshot(plane, team, sandbox_id)
            if snapshot is None:
                raise sandbox_not_found(sandbox_id)
            return True, await resume(plane, team, snapshot, timeout_s, memory)
    raise ApiError(409, STILL_TRANSITIONING)


async def resume(
    plane: ControlPlane, team: Team, snapshot: SnapshotRecord, timeout_s: int, memory: bool | None
) -> LiveSandbox:
    """Start a paused sandbox again from its snapshot, origin node first. Call with its lock held.

    The snapshot row stays: it is what the sandbox returns to when its VM ends without a pause,
    and what kill deletes. Env vars are not sent again (they live on in the guest's memory).
    """
    return await plane.start(
        team,
        snapshot.sandbox_id,
        snapshot.spec,
        timeout_s,
        resume=True,
        filesystem_boot=memory is False or snapshot.filesystem_only,
        preferred_node=snapshot.origin_node,
    )


async def resume_legacy(plane: ControlPlane, team: Team, sandbox_id: str, body: Body) -> LiveSandbox:
    """``POST /sandboxes/{id}/resume``: 409 when running, 201 when resumed, 404 otherwise."""
    timeout_s = check_timeout(_optional(body.integer("timeout"), DEFAULT_TIMEOUT_V1_S), team)
    memory = body.flag("memory")
    if plane.running(plane.catalog.get(sandbox_id), team) is not None:
        raise ApiError(409, f"Sandbox \"{sandbox_id}\" can't be resumed, it's already running")
    async with plane.catalog.lock(sandbox_id):
        if plane.catalog.get(sandbox_id) is not None:
            raise ApiError(409, f"Sandbox \"{sandbox_id}\" can't be resumed, it's already running")
        snapshot = await _own_snapshot(plane, team, sandbox_id)
        if snapshot is None:
            raise sandbox_not_found(sandbox_id)
        return await resume(plane, team, snapshot, timeout_s, memory)


async def _own_snapshot(plane: ControlPlane, team: Team, sandbox_id: str) -> SnapshotRecord | None:
    snapshot = await plane.store.get_snapshot(sandbox_id)
    return snapshot if snapshot is not None and snapshot.spec.team_id == team.id else None


def _optional(value: int | None, default: int) -> int:
    return default if value is None else value


# -- kill, timeout, refresh ------------------------------------------------------------------------


async def kill(plane: ControlPlane, team: Team, sandbox_id: str) -> None:
    """``DELETE /sandboxes/{id}``: the running VM and the snapshot both go; 404 when neither is.

    A snapshot deleted releases its build: gc runs in the background (``plane.gc``).
    """
    killed = False
    for _ in range(TRANSITION_ATTEMPTS):
        killed = await _kill_running(plane, team, sandbox_id) or killed
        dropped = False
        async with plane.catalog.lock(sandbox_id):
            if plane.running(plane.catalog.get(sandbox_id), team) is not None:
                continue  # resumed while this waited for the lock: kill that run too
            if await _own_snapshot(plane, team, sandbox_id) is not None:
                dropped = await plane.store.delete_snapshot(sandbox_id)
                killed = dropped or killed
        if dropped:
            plane.gc.released(f"paused sandbox {sandbox_id} killed")
        if not killed:
            raise sandbox_not_found(sandbox_id)
        return
    raise ApiError(409, STILL_TRANSITIONING)


async def _kill_running(plane: ControlPlane, team: Team, sandbox_id: str) -> bool:
    """Kill the team's sandbox in the catalog, after any pause or snapshot in progress."""
    for _ in range(TRANSITION_ATTEMPTS):
        live = plane.running(plane.catalog.get(sandbox_id), team)
        if live is None:
            return False
        if live.state is SandboxState.RUNNING:
            plane.catalog.transition(live, SandboxState.KILLING)
            await plane.kill_live(live, "killed by the API")
            return True
        await plane.catalog.wait_settled(live, TRANSITION_WAIT_S)
    raise ApiError(409, STILL_TRANSITIONING)


async def set_timeout(plane: ControlPlane, team: Team, sandbox_id: str, body: Body) -> None:
    """``POST /sandboxes/{id}/timeout``: may shorten; negative means now."""
    timeout_s = body.integer("timeout", required=True) or 0
    live = await _settled_running(plane, team, sandbox_id)
    await plane.extend(live, max(timeout_s, 0), allow_shorter=True)


async def refresh(plane: ControlPlane, team: Team, sandbox_id: str, body: Body) -> None:
    """``POST /sandboxes/{id}/refreshes``: keep alive ``duration`` more seconds (never shortens)."""
    duration_s = _optional(body.integer("duration"), DEFAULT_REFRESH_S)
    if not 0 <= duration_s <= MAX_REFRESH_S:
        raise bad_request(f"duration must be between 0 and {MAX_REFRESH_S} seconds")
    live = await _settled_running(plane, team, sandbox_id)
    await plane.extend(live, duration_s, allow_shorter=False)


async def _settled_running(plane: ControlPlane, team: Team, sandbox_id: str) -> LiveSandbox:
    """The team's running ``sandbox_id``, after any snapshot in progress; 404 otherwise."""
    live = plane.running(plane.catalog.get(sandbox_id), team)
    if live is not None and live.state is SandboxState.SNAPSHOTTING:
        await plane.catalog.wait_settled(live, TRANSITION_WAIT_S)
        live = plane.running(plane.catalog.get(sandbox_id), team)
    if live is None or live.state is not SandboxState.RUNNING:
        raise sandbox_not_found(sandbox_id)
    return live


# -- get, metrics ----------------------------------------------------------------------------------


async def find(plane: ControlPlane, team: Team, sandbox_id: str) -> LiveSandbox | SnapshotRecord:
    """What ``GET /sandboxes/{id}`` shows: the live sandbox, else its snapshot; 404 otherwise."""
    live = plane.running(plane.catalog.get(sandbox_id), team)
    if live is not None:
        return live
    snapshot = await _own_snapshot(plane, team, sandbox_id)
    if snapshot is None:
        raise sandbox_not_found(sandbox_id)
    return snapshot


def shown_state(live: LiveSandbox) -> str:
    """The original reports a pausing sandbox as paused, a snapshotting one as running."""
    return "paused" if live.state is SandboxState.PAUSING else "running"


async def metrics(
    plane: ControlPlane,
    session: aiohttp.ClientSession,
    team: Team,
    sandbox_id: str,
    start: int | None,
    end: int | None,
) -> list[dict[str, Any]]:
    """``GET /sandboxes/{id}/metrics``: envd's ``/metrics`` now, through the node's proxy.

    Only the current sample exists (no history is kept): it is answered when it falls in
    ``[start, end]``. A paused sandbox, or an envd without ``/metrics``, answers ``[]``.
    """
    found = await find(plane, team, sandbox_id)
    if not isinstance(found, LiveSandbox) or found.state is not SandboxState.RUNNING:
        return []
    sample = await envd_metrics(plane, session, found)
    if sample is None:
        return []
    stamp = sample["timestampUnix"]
    if (start is not None and stamp < start) or (end is not None and stamp > end):
        return []
    return [sample]


async def envd_metrics(
    plane: ControlPlane, session: aiohttp.ClientSession, live: LiveSandbox
) -> dict[str, Any] | None:
    """One ``SandboxMetric`` from the sandbox's envd, or None when envd has none to give."""
    node = plane.nodes.get(live.record.node)
    if node is None:
        return None
    headers = {SANDBOX_ID_HEADER: live.sandbox_id, SANDBOX_PORT_HEADER: str(ENVD_PORT), "Host": "localhost"}
    token = plane.envd_token(live.sandbox_id, live.record.spec)
    if token is not None:
        headers["X-Access-Token"] = token
    try:
        async with session.get(
            f"{node.proxy_url}/metrics",
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=METRICS_TIMEOUT_S),
        ) as answer:
            if answer.status != 200:
                _log.debug("envd of %s answered %d to /metrics", live.sandbox_id, answer.status)
                return None
            raw = await answer.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        _log.info("reading the metrics of %s failed: %s", live.sandbox_id, exc)
        return None
    if not isinstance(raw, dict):
        return None
    return _metric(raw)


def _metric(raw: dict[str, Any]) -> dict[str, Any] | None:
    """envd's ``{"ts", "cpu_count", "cpu_used_pct", "mem_*", "disk_*"}`` as a ``SandboxMetric``."""
    try:
        stamp = int(raw.get("ts") or utcnow().timestamp())
        return {
            "timestamp": rfc3339(dt.datetime.fromtimestamp(stamp, dt.UTC)),
            "timestampUnix": stamp,
            "cpuCount": int(raw.get("cpu_count", 0)),
            "cpuUsedPct": float(raw.get("cpu_used_pct", 0.0)),
            "memUsed": int(raw.get("mem_used", 0)),
            "memTotal": int(raw.get("mem_total", 0)),
            "memCache": int(raw.get("mem_cache", 0)),
            "diskUsed": int(raw.get("disk_used", 0)),
            "diskTotal": int(raw.get("disk_total", 0)),
        }
    except (TypeError, ValueError, OverflowError):
        return None


# -- network ---------------------------------------------------------------------------------------


async def update_network(plane: ControlPlane, team: Team, sandbox_id: str, body: Body) -> None:
    """``PUT /sandboxes/{id}/network``: new egress rules on the node, kept for resumes."""
    update, allow_internet_access = parse_update(body)
    live = plane.running(plane.catalog.get(sandbox_id), team)
    if live is None:
        if await _own_snapshot(plane, team, sandbox_id) is not None:
            raise ApiError(409, f'Sandbox "{sandbox_id}" is paused: resume it before changing its network')
        raise sandbox_not_found(sandbox_id)
    if live.state is not SandboxState.RUNNING:
        raise ApiError(
            409, f"Sandbox \"{sandbox_id}\" cannot change its network while in '{live.state}' state"
        )
    spec = live.record.spec
    network = {**spec.network, **update}
    allow = spec.allow_internet_access if allow_internet_access is None else allow_internet_access
    node = plane.nodes.get(live.record.node)
    if node is None:
        raise sandbox_not_found(sandbox_id)
    try:
        await node.update(sandbox_id, egress=egress_config(network, allow))
    except NodeError as exc:
        raise ApiError(500, f"Updating the network of sandbox {sandbox_id} failed: {exc.details}") from exc
    record = replace(live.record, spec=replace(spec, network=network, allow_internet_access=allow))
    plane.catalog.update(sandbox_id, record)
    await plane.store.put_sandbox(record)

"""The REST API (aiohttp): E2B's paths, the API-key check, and the JSON error boundary.

Every answer the SDK may parse is JSON: refusals are ``{"code", "message"[, "error_code"]}``
with the status the SDK maps (401 Authentication, 404 NotFound, 409, 429 RateLimit with
``Retry-After``, 503 ServiceBusy, ...). Unknown paths are 404 JSON, a wrong method is 405
JSON, and any failure the code did not foresee is a 500 JSON with the traceback in the log:
``_errors`` is the outermost middleware, so nothing else can reach the client.

Every sandbox, snapshot and template endpoint needs a valid ``X-API-Key``; ``/health`` does
not. Sandbox logs endpoints answer empty lists in the documented shapes: ember keeps no
sandbox logs. Template build logs come from the node building (``builds``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from ember.api import builds, listing, sandboxes, snapshots, templates
from ember.api.auth import hash_api_key, looks_like_api_key
from ember.api.catalog import LiveSandbox
from ember.api.errors import INTERNAL, ApiError, unauthorized
from ember.api.idempotency import HEADER as IDEMPOTENCY_HEADER
from ember.api.idempotency import IdempotencyCache
from ember.api.ids import parse_sandbox_id
from ember.api.plane import ControlPlane
from ember.api.records import Team
from ember.api.requests import query_int, read_body
from ember.api.store import StoreError
from ember.api.views import detail_paused, detail_running, sandbox_json

_log = logging.getLogger(__name__)

DEFAULT_API_PORT = 3000
API_KEY_HEADER = "X-API-Key"
KEY_CACHE_TTL_S = 10.0
MAX_BODY_BYTES = 4 * 1024 * 1024

_PLANE: web.AppKey[ControlPlane] = web.AppKey("plane", ControlPlane)
_SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("api_session", aiohttp.ClientSession)
_TEAM: web.RequestKey[Team] = web.RequestKey("ember_team", Team)
_OPEN_PATHS = frozenset({"/health"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(value, status=status, headers=headers, dumps=_dumps)


def _error(error: ApiError) -> web.Response:
    return _json(error.body(), error.status, error.headers)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(ApiError(exc.status, exc.reason or "error"))
    except StoreError as exc:
        _log.error("%s %s: %s", request.method, request.path, exc)
        return _error(ApiError(500, f"the control plane's database failed: {exc}", INTERNAL))
    except Exception as exc:
        _log.exception("%s %s failed unexpectedly", request.method, request.path)
        return _error(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", INTERNAL))


class _KeyCache:
    """Teams of recently seen key hashes, so each request does not cost a database query."""

    def __init__(self) -> None:
        self._teams: dict[str, tuple[Team, float]] = {}

    async def team(self, plane: ControlPlane, key: str) -> Team | None:
        digest = hash_api_key(key)
        cached = self._teams.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        team = await plane.store.team_for_api_key(digest)
        if team is not None:
            if len(self._teams) > 10_000:
                self._teams.clear()
            self._teams[digest] = (team, now + KEY_CACHE_TTL_S)
        return team


def _auth(plane: ControlPlane) -> Middleware:
    keys = _KeyCache()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.http_exception is not None or request.path in _OPEN_PATHS:
            return await handler(request)
        key = request.headers.get(API_KEY_HEADER)
        team = await keys.team(plane, key) if key and looks_like_api_key(key) else None
        if team is None:
            raise unauthorized()
        request[_TEAM] = team
        return await handler(request)

    return check


def _team(request: web.Request) -> Team:
    return request[_TEAM]


def _sandbox_id(request: web.Request) -> str:
    return parse_sandbox_id(request.match_info["id"])


class _Handlers:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.idempotency = IdempotencyCache()

    def _sandbox(self, live: LiveSandbox) -> dict[str, Any]:
        return sandbox_json(live.sandbox_id, live.record.spec, self.plane.tokens, self.plane.domain)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    # -- sandboxes ------------------------------------------------------------------------------

    async def create_v1(self, request: web.Request) -> web.Response:
        body = await read_body(request, required=True)
        live = await sandboxes.create(self.plane, _team(request), body, v1=True)
        return _json(self._sandbox(live), 201)

    async def create_v2(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = await read_body(request, required=True)
        team = _team(request)

        async def create() -> tuple[int, Any]:
            live = await sandboxes.create(self.plane, team, body, v1=False)
            return 201, self._sandbox(live)

        status, answer = await self.idempotency.run(
            team.id, request.headers.get(IDEMPOTENCY_HEADER), raw, create
        )
        return _json(answer, status)

    async def _connect(self, request: web.Request, v1: bool) -> web.Response:
        body = await read_body(request, required=v1)
        timeout_s = body.integer("timeout", required=v1)
        resumed, live = await sandboxes.connect(
            self.plane,
            _team(request),
            _sandbox_id(request),
            sandboxes.DEFAULT_TIMEOUT_V2_S if timeout_s is None else timeout_s,
            body.flag("memory"),
        )
        return _json(self._sandbox(live), 201 if resumed else 200)

    async def connect_v1(self, request: web.Request) -> web.Response:
        return await self._connect(request, v1=True)

    async def connect_v2(self, request: web.Request) -> web.Response:
        return await self._connect(request, v1=False)

    async def resume(self, request: web.Request) -> web.Response:
        body = await read_body(request, required=False)
        live = await sandboxes.resume_legacy(self.plane, _team(request), _sandbox_id(request), body)
        return _json(self._sandbox(live), 201)

    async def list_v1(self, request: web.Request) -> web.Response:
        return _json(listing.list_v1(self.plane, _team(request), request))

    async def list_v2(self, request: web.Request) -> web.Response:
        page = await listing.list_v2(self.plane, _team(request), request)
        headers = {}
        if page.next_token:
            headers[listing.NEXT_TOKEN_HEADER] = page.next_token
        if page.total_running is not None:
            headers[listing.TOTAL_RUNNING_HEADER] = str(page.total_running)
        return _json(page.items, headers=headers)

    async def get(self, request: web.Request) -> web.Response:
        found = await sandboxes.find(self.plane, _team(request), _sandbox_id(request))
        if isinstance(found, LiveSandbox):
            state = sandboxes.shown_state(found)
            return _json(detail_running(found.record, state, self.plane.tokens, self.plane.domain))
        return _json(detail_paused(found, self.plane.tokens))

    async def kill(self, request: web.Request) -> web.Response:
        await sandboxes.kill(self.plane, _team(request), _sandbox_id(request))
        return web.Response(status=204)

    async def timeout(self, request: web.Request) -> web.Response:
        body = await read_body(request, required=True)
        await sandboxes.set_timeout(self.plane, _team(request), _sandbox_id(request), body)
        return web.Response(status=204)

    async def refresh(self, request: web.Request) -> web.Response:
        body = await read_body(request, required=False)
        await sandboxes.refresh(self.plane, _team(request), _sandbox_id(request), body)
        return web.Response(status=204)

    async def pause(self, request: web.Request) -> web.Response:
        body = await read_body(request, required=False)
        await snapshots.pause(self.plane, _team(request), _sandbox_id(request), body)
        return web.Response(status=204)

    async def network(self, request: web.Request) -> web.Response:
        body = await read_body(request, required=True)
        await sandboxes.update_network(self.plane, _team(request), _sandbox_id(request), body)
        return web.Response(status=204)

    async def metrics(self, request: web.Request) -> web.Response:
        samples = await sandboxes.metrics(
            self.plane,
            request.app[_SESSION],
            _team(request),
            _sandbox_id(request),
            query_int(request, "start"),
            query_int(request, "end"),
        )
        return _json(samples)

    async def metrics_many(self, request: web.Request) -> web.Response:
        team = _team(request)
        wanted = [part for part in request.query.get("sandbox_ids", "").split(",") if part]
        found: dict[str, Any] = {}
        for path_id in wanted:
            sandbox_id = parse_sandbox_id(path_id)
            live = self.plane.running(self.plane.catalog.get(sandbox_id), team)
            if live is None:
                continue
            sample = await sandboxes.envd_metrics(self.plane, request.app[_SESSION], live)
            if sample is not None:
                found[sandbox_id] = sample
        return _json({"sandboxes": found})

    async def logs_v1(self, request: web.Request) -> web.Response:
        await sandboxes.find(self.plane, _team(request), _sandbox_id(request))
        return _json({"logs": [], "logEntries": []})

    async def logs_v2(self, request: web.Request) -> web.Response:
        await sandboxes.find(self.plane, _team(request), _sandbox_id(request))
        return _json({"logs": []})

    async def fork(self, request: web.Request) -> web.Response:
        body = await read_body(request, required=False)
        return _json(await snapshots.fork(self.plane, _team(request), _sandbox_id(request), body), 201)

    async def snapshot(self, request: web.Request) -> web.Response:
        body = await read_body(request, required=False)
        template = await snapshots.create_snapshot(self.plane, _team(request), _sandbox_id(request), body)
        return _json({"snapshotID": template.id, "names": list(template.aliases)}, 201)

    async def list_snapshots(self, request: web.Request) -> web.Response:
        sandbox_id = request.query.get("sandboxID")
        items, next_token = await snapshots.list_snapshots(
            self.plane,
            _team(request),
            parse_sandbox_id(sandbox_id) if sandbox_id else None,
            request.query.get("name") or None,
            query_int(request, "limit", snapshots.DEFAULT_SNAPSHOT_LIMIT) or 0,
            request.query.get("nextToken") or None,
        )
        return _json(items, headers={listing.NEXT_TOKEN_HEADER: next_token} if next_token else None)

    # -- templates ------------------------------------------------------------------------------

    async def templates(self, request: web.Request) -> web.Response:
        return _json(await templates.list_templates(self.plane.store, _team(request)))

    async def templates_v2(self, request: web.Request) -> web.Response:
        items, next_token = await templates.list_templates_page(
            self.plane.store,
            _team(request),
            query_int(request, "limit", 100) or 0,
            request.query.get("nextToken") or None,
        )
        return _json(items, headers={listing.NEXT_TOKEN_HEADER: next_token} if next_token else None)

    async def template(self, request: web.Request) -> web.Response:
        template = await templates.find_own(self.plane.store, _team(request), request.match_info["id"])
        builds = await self.plane.store.list_builds(template.id)
        return _json(await templates.template_json(self.plane.store, template, builds))

    async def delete_template(self, request: web.Request) -> web.Response:
        await templates.delete(self.plane, _team(request), request.match_info["id"])
        return web.Response(status=204)

    # -- template builds ------------------------------------------------------------------------

    async def request_build(self, request: web.Request) -> web.Response:
        body = await read_body(request, required=True)
        return _json(await builds.request_build(self.plane, _team(request), body), 202)

    async def file_upload(self, request: web.Request) -> web.Response:
        answer = await builds.file_upload(
            self.plane, _team(request), request.match_info["id"], request.match_info["hash"]
        )
        return _json(answer, 201)

    async def start_build(self, request: web.Request) -> web.Response:
        body = await read_body(request, required=True)
        await builds.start_build(
            self.plane, _team(request), request.match_info["id"], request.match_info["build"], body
        )
        return web.Response(status=202)

    async def build_status(self, request: web.Request) -> web.Response:
        answer = await builds.build_status(
            self.plane,
            _team(request),
            request.match_info["id"],
            request.match_info["build"],
            query_int(request, "logsOffset", 0) or 0,
            query_int(request, "limit", builds.STATUS_LOG_LIMIT) or 0,
            builds.parse_level(request.query.get("level")),
        )
        return _json(answer)

    async def build_logs(self, request: web.Request) -> web.Response:
        source = request.query.get("source", "")
        if source not in ("", "temporary", "persistent"):
            raise ApiError(400, f'Invalid query: "source" must be temporary or persistent, got {source!r}')
        answer = await builds.build_logs(
            self.plane,
            _team(request),
            request.match_info["id"],
            request.match_info["build"],
            query_int(request, "cursor"),
            query_int(request, "limit", builds.LOGS_LIMIT) or 0,
            request.query.get("direction") or "forward",
            builds.parse_level(request.query.get("level")),
        )
        return _json(answer)

    async def assign_tags(self, request: web.Request) -> web.Response:
        body = await read_body(request, required=True)
        return _json(await templates.assign_tags(self.plane, _team(request), body), 201)

    async def remove_tags(self, request: web.Request) -> web.Response:
        body = await read_body(request, required=True)
        await templates.remove_tags(self.plane, _team(request), body)
        return web.Response(status=204)

    async def tags(self, request: web.Request) -> web.Response:
        return _json(await templates.list_tags(self.plane, _team(request), request.match_info["id"]))

    async def alias(self, request: web.Request) -> web.Response:
        return _json(
            await templates.alias_lookup(self.plane.store, _team(request), request.match_info["alias"])
        )


def build_app(plane: ControlPlane) -> web.Application:
    """The REST application over ``plane`` (its routes are the SDK's, see the module docstring)."""
    app = web.Application(middlewares=[_errors, _auth(plane)], client_max_size=MAX_BODY_BYTES)
    app[_PLANE] = plane
    app.cleanup_ctx.append(_session)
    h = _Handlers(plane)
    r = app.router
    r.add_get("/health", h.health)
    r.add_post("/sandboxes", h.create_v1)
    r.add_get("/sandboxes", h.list_v1)
    r.add_get("/sandboxes/metrics", h.metrics_many)
    r.add_post("/v2/sandboxes", h.create_v2)
    r.add_get("/v2/sandboxes", h.list_v2)
    r.add_get("/sandboxes/{id}", h.get)
    r.add_delete("/sandboxes/{id}", h.kill)
    r.add_get("/sandboxes/{id}/metrics", h.metrics)
    r.add_get("/sandboxes/{id}/logs", h.logs_v1)
    r.add_get("/v2/sandboxes/{id}/logs", h.logs_v2)
    r.add_post("/sandboxes/{id}/pause", h.pause)
    r.add_post("/sandboxes/{id}/resume", h.resume)
    r.add_post("/sandboxes/{id}/connect", h.connect_v1)
    r.add_post("/v2/sandboxes/{id}/connect", h.connect_v2)
    r.add_post("/sandboxes/{id}/timeout", h.timeout)
    r.add_post("/sandboxes/{id}/refreshes", h.refresh)
    r.add_put("/sandboxes/{id}/network", h.network)
    r.add_post("/sandboxes/{id}/fork", h.fork)
    r.add_post("/sandboxes/{id}/snapshots", h.snapshot)
    r.add_get("/snapshots", h.list_snapshots)
    r.add_get("/templates", h.templates)
    r.add_get("/v2/templates", h.templates_v2)
    r.add_get("/templates/aliases/{alias}", h.alias)
    r.add_post("/templates/tags", h.assign_tags)
    r.add_delete("/templates/tags", h.remove_tags)
    r.add_post("/v3/templates", h.request_build)
    r.add_get("/templates/{id}/files/{hash}", h.file_upload)
    r.add_post("/v2/templates/{id}/builds/{build}", h.start_build)
    r.add_get("/templates/{id}/builds/{build}/status", h.build_status)
    r.add_get("/templates/{id}/builds/{build}/logs", h.build_logs)
    r.add_get("/templates/{id}/tags", h.tags)
    r.add_get("/templates/{id}", h.template)
    r.add_delete("/templates/{id}", h.delete_template)
    return app


async def _session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar()) as session:
        app[_SESSION] = session
        yield

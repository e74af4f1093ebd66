"""The edge proxy (the original's client-proxy, port 3002): sandbox traffic to the owning node.

Per request:

1. route with the node proxy's own rules (``ember.orchestrator.routing``): the
   ``E2b-Sandbox-Id``/``-Port`` headers when the Host is ``localhost``, an IP or
   ``sandbox.<domain>``, else Host ``{port}-{id}.<domain>``; a signed ``/files`` URL naming
   neither goes to the running sandbox whose envd token signs it (with ``E2B_SANDBOX_URL``,
   what ``ember serve`` prints, the SDK's ``download_url``/``upload_url`` point at the edge
   with nothing else naming the sandbox, and a browser or curl cannot add the headers);
   400 JSON when nothing works;
2. find the node: the catalog for a running sandbox; otherwise the auto-resume policy
   (``resume.resume_for_traffic``), whose refusals become the original's answers: 403 (bad
   credentials), 409 (still transitioning), 429 (team limit), 502 "The sandbox was not found";
3. forward to ``http://<node>:<node-proxy-port>``, keeping the Host; a header-routed request
   instead gets Host ``{port}-{id}.<domain>`` and ``X-Forwarded-Host`` (with no domain the
   Host stays, and the node routes by the headers too);
4. relay with the node proxy's own functions (``ember.orchestrator.proxy``): bodies stream
   both ways chunk by chunk, WebSockets message by message.

Unlike the node proxy, connections to the nodes are kept alive and reused. The dial to a
node is retried as the node proxy retries a dial to a VM (5 attempts over one second;
the original's edge tries once); a node that stays unreachable is 502.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ember.api.catalog import SandboxState
from ember.api.errors import STILL_TRANSITIONING
from ember.api.nodes import NodeClient
from ember.api.plane import ControlPlane
from ember.api.resume import ResumeRefused, resume_for_traffic
from ember.envd.agent.signing import READ, WRITE, file_signature
from ember.traffic.relay import (
    MAX_HEADER_BYTES,
    PortNotOpen,
    end_to_end,
    is_websocket_upgrade,
    relay_http,
    relay_session,
    relay_websocket,
)
from ember.traffic.routing import (
    ENVD_PORT,
    SANDBOX_ID_HEADER,
    SANDBOX_NOT_FOUND_MESSAGE,
    SANDBOX_PORT_HEADER,
    TRAFFIC_TOKEN_HEADER,
    Route,
    RouteError,
    route_request,
)

_log = logging.getLogger(__name__)

DEFAULT_EDGE_PORT = 3002
IDLE_TIMEOUT_S = 610.0
DIAL_TIMEOUT_S = 10.0
NODE_UNREACHABLE_MESSAGE = "The sandbox's node cannot be reached"
ENVD_TOKEN_HEADER = "X-Access-Token"

_SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("edge_session", aiohttp.ClientSession)


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body, separators=(",", ":")).encode(), content_type="application/json"
    )


def _not_found(sandbox_id: str) -> web.Response:
    return _json(502, {"sandboxId": sandbox_id, "message": SANDBOX_NOT_FOUND_MESSAGE, "code": 502})


class EdgeProxy:
    """Serves sandbox traffic for ``plane``'s sandboxes; run ``application()`` on any aiohttp site."""

    def __init__(self, plane: ControlPlane, domain: str | None) -> None:
        self._plane = plane
        self._domain = domain
        self.requests = 0
        self.resumes_asked = 0

    def application(self) -> web.Application:
        app = web.Application(
            handler_args={"max_line_size": MAX_HEADER_BYTES, "max_field_size": MAX_HEADER_BYTES}
        )
        app.router.add_route("*", "/{path:.*}", self._handle)
        app.cleanup_ctx.append(_client_session)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        signed = False
        try:
            route = route_request(request.host, request.headers, self._domain)
        except RouteError as exc:
            if request.path == "/health" and not _names_sandbox(request):
                return _json(200, {"status": "healthy"})
            found = None if _names_sandbox(request) else self._signed_files_route(request)
            if found is None:
                return _json(400, {"code": 400, "message": exc.message})
            route, signed = found, True
        node = await self._node_for(request, route)
        if isinstance(node, web.Response):
            return node
        headers = end_to_end(request.headers)
        headers.popall("Expect", None)
        if signed:
            headers[SANDBOX_ID_HEADER] = route.sandbox_id
            headers[SANDBOX_PORT_HEADER] = str(route.port)
        if self._domain and (signed or _header_routed(request, self._domain)):
            headers["Host"] = f"{route.port}-{route.sandbox_id}.{self._domain}"
            headers["X-Forwarded-Host"] = request.host
        url = URL.build(
            scheme="http",
            host=node.host,
            port=node.proxy_port,
            path=request.rel_url.raw_path,
            query_string=request.rel_url.raw_query_string,
            encoded=True,
        )
        session = request.app[_SESSION]
        try:
            if is_websocket_upgrade(request):
                _, response = await relay_websocket(request, session, url, headers)
            else:
                _, response = await relay_http(request, session, url, headers)
        except PortNotOpen:
            _log.warning("node %s does not answer on its proxy port %d", node.address, node.proxy_port)
            return _json(
                502, {"sandboxId": route.sandbox_id, "message": NODE_UNREACHABLE_MESSAGE, "code": 502}
            )
        return response

    def _signed_files_route(self, request: web.Request) -> Route | None:
        """The running sandbox whose envd token signs this ``/files`` URL, if one does.

        A signature verifies with one sandbox's token only, so finding the sandbox by it grants
        nothing the URL did not already grant; envd checks the signature (and its expiry) again.
        """
        signature = request.query.get("signature")
        if request.path != "/files" or request.method not in ("GET", "POST") or not signature:
            return None
        try:
            raw_expiration = request.query.get("signature_expiration")
            expiration = None if raw_expiration is None else int(raw_expiration)
        except ValueError:
            return None
        operation = READ if request.method == "GET" else WRITE
        path, username = request.query.get("path", ""), request.query.get("username")
        for live in self._plane.catalog.all():
            token = self._plane.envd_token(live.sandbox_id, live.record.spec)
            if token is None:
                continue
            expected = file_signature(path, operation, username, token, expiration)
            if hmac.compare_digest(expected.encode(), signature.encode()):
                return Route(live.sandbox_id, ENVD_PORT)
        return None

    async def _node_for(self, request: web.Request, route: Route) -> NodeClient | web.Response:
        live = self._plane.catalog.get(route.sandbox_id)
        if live is not None and live.state in (SandboxState.RUNNING, SandboxState.SNAPSHOTTING):
            node = self._plane.nodes.get(live.record.node)
            return node if node is not None else _not_found(route.sandbox_id)
        self.resumes_asked += 1
        try:
            return await resume_for_traffic(
                self._plane,
                route.sandbox_id,
                route.port,
                request.headers.get(TRAFFIC_TOKEN_HEADER),
                request.headers.get(ENVD_TOKEN_HEADER),
            )
        except ResumeRefused as exc:
            return _refusal(route.sandbox_id, exc)


def _refusal(sandbox_id: str, exc: ResumeRefused) -> web.Response:
    """The original edge's answers to a refused resume."""
    if exc.code is grpc.StatusCode.PERMISSION_DENIED:
        return _json(403, {"sandboxId": sandbox_id, "message": exc.message, "code": 403})
    if exc.code is grpc.StatusCode.FAILED_PRECONDITION and exc.message == STILL_TRANSITIONING:
        return _json(409, {"sandboxId": sandbox_id, "message": STILL_TRANSITIONING, "code": 409})
    if exc.code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return _json(429, {"sandboxId": sandbox_id, "message": exc.message, "code": 429})
    return _not_found(sandbox_id)


def _names_sandbox(request: web.Request) -> bool:
    return SANDBOX_ID_HEADER in request.headers or SANDBOX_PORT_HEADER in request.headers


def _header_routed(request: web.Request, domain: str) -> bool:
    """Whether routing used the headers: the Host alone does not name a sandbox."""
    try:
        route_request(request.host, CIMultiDict(), domain)
    except RouteError:
        return True
    return False


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    """The edge's client to the nodes: pooled keep-alive connections, no jar, no stream timeout."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60.0)
    async with relay_session(connector) as session:
        app[_SESSION] = session
        yield

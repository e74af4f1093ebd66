"""The node's sandbox proxy: HTTP and WebSocket traffic from the edge to a port inside a sandbox.

Every node runs one (port 5007). The edge proxy forwards ``{port}-{id}.{domain}`` traffic here
with the Host kept; this proxy finds which slot the sandbox runs in and relays the request to
``http://<slot host IP>:<port>``. Per request, in this order (E2B's order, so clients see the
same answers):

1. route: ``routing.route_request`` (Host or ``E2b-Sandbox-*`` headers) -> 400 on failure;
2. envd's control endpoints on 49983 are refused before any lookup -> 404;
3. ``SandboxDirectory.lookup`` -> 502 when the sandbox is not on this node;
4. the traffic access token, for ports other than envd's -> 403 when missing or wrong;
5. dial, up to 5 attempts 100/200/300/400 ms apart (a port forward inside a freshly resumed
   guest takes about a second to appear) -> 502 when the port stays closed;
6. relay. Bodies stream both ways chunk by chunk, never buffered whole: Connect streams, SSE
   and uploads of any size pass as they are produced. WebSocket upgrades are relayed message
   by message between two aiohttp WebSocket ends.

Every error body is JSON with a ``code`` and a ``message``, as the original's are (E2B's SDK
reads them). The messages are module constants here and in ``routing``, verbatim from the
original except ``UPSTREAM_FAILED_MESSAGE``, ember's own.

Connections to the VM are never reused: each request dials anew and closes after, so a
paused or replaced sandbox never receives a stale connection, and no cookie jar is kept.
Connections from the edge are kept alive up to ``IDLE_TIMEOUT_S``.

A relay whose sandbox goes away (paused, killed, its VM dead) is cut within
``STREAM_CHECK_S``: a guest that vanished sends neither FIN nor RST, so a stream to it (a
command's output, a watch) would otherwise wait forever, and its client with it. The proxy
asks the directory about every open relay's sandbox at that interval and aborts the client
connection of each whose target is no longer the one it dialled.

Not implemented: the original's HTML error pages for browser navigations, its optional
per-sandbox connection limit (off by default there), and upgrades other than WebSocket (their
Upgrade header is dropped and the request is relayed as plain HTTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ember.errors import EmberError
from ember.traffic.relay import (
    MAX_HEADER_BYTES,
    PortNotOpen,
    ProxyOutcome,
    abort,
    end_to_end,
    is_websocket_upgrade,
    json_error,
    plain_error,
    relay_http,
    relay_session,
    relay_websocket,
)
from ember.traffic.routing import (
    ENVD_PORT,
    RESERVED_ROUTE_MESSAGE,
    SANDBOX_ID_HEADER,
    SANDBOX_NOT_FOUND_MESSAGE,
    SANDBOX_PORT_HEADER,
    TOKEN_INVALID_MESSAGE,
    TOKEN_MISSING_MESSAGE,
    TRAFFIC_TOKEN_HEADER,
    Route,
    RouteError,
    is_envd_control_route,
    route_request,
)

DEFAULT_PORT = 5007
IDLE_TIMEOUT_S = 620.0
PORT_NOT_OPEN_MESSAGE = "The sandbox is running but port is not open"
_log = logging.getLogger(__name__)

_SHUTDOWN_GRACE_S = 1.0
STREAM_CHECK_S = 1.0
_SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
_T = TypeVar("_T")


@dataclass(frozen=True)
class ProxyTarget:
    """Where a sandbox is reachable on this node, and how its ingress is configured."""

    sandbox_id: str
    # The slot's host-side IP the VM's ports are reachable at, e.g. "10.11.0.3".
    host: str
    # When set, every port but envd's requires it in header e2b-traffic-access-token.
    traffic_access_token: str | None
    # Host header sent to the VM instead of the client's (``${PORT}`` becomes the port).
    mask_request_host: str | None = None
    # The node's object for this run of the sandbox, compared by identity: a resume makes a new
    # one, so a relay to the run before is cut even when the new run has the same slot.
    run: object = None


class SandboxDirectory(Protocol):
    """The proxy's only view of the node's sandboxes. Called on the proxy's event loop: no blocking."""

    def lookup(self, sandbox_id: str) -> ProxyTarget | None: ...


NodeRoute = Callable[[web.Request], Awaitable[web.StreamResponse]]
"""One of the node's own pages (``/health``, ``/metrics``, uploads): a handler of the request."""


def _zero_per_outcome() -> dict[ProxyOutcome, int]:
    return dict.fromkeys(ProxyOutcome, 0)


@dataclass
class ProxyCounters:
    """Requests seen and how each ended, since the proxy was made. Updated on the proxy's loop."""

    requests: int = 0
    outcomes: dict[ProxyOutcome, int] = field(default_factory=_zero_per_outcome)

    def record(self, outcome: ProxyOutcome) -> None:
        self.outcomes[outcome] += 1

    def snapshot(self) -> dict[str, int]:
        """``{"requests": n, "<outcome>": n, ...}``, a copy safe to read from another thread."""
        return {
            "requests": self.requests,
            **{outcome.value: n for outcome, n in self.outcomes.copy().items()},
        }


class ProxyError(EmberError):
    """The node proxy cannot listen, or was started while it runs."""


class NodeProxy:
    """The sandbox proxy of one node, over ``directory``, for sandbox URLs under ``domain``.

    ``start``/``stop`` run it on the caller's event loop; ``application()`` gives the bare
    ``aiohttp.web.Application`` for a caller that runs its own aiohttp server. ``counters``
    keeps counting across restarts.
    """

    def __init__(
        self,
        directory: SandboxDirectory,
        domain: str | None,
        node_routes: Mapping[str, NodeRoute] | None = None,
    ) -> None:
        """``node_routes`` are the node's own pages by path prefix (``/health``, ``/upload``), served
        only to a request that names no sandbox (Host ``localhost`` or an IP literal, no sandbox
        headers)."""
        self._directory = directory
        self._domain = domain
        self._node_routes = dict(node_routes or {})
        self.counters = ProxyCounters()
        self._runner: web.AppRunner | None = None
        self._relays: dict[asyncio.Task[object], ProxyTarget] = {}
        self._cut: set[asyncio.Task[object]] = set()

    def application(self) -> web.Application:
        """A new application serving every method and path; its client session lives with it.

        Run it with ``handler_cancellation=True`` (as ``start`` does), so a client that goes
        away also drops its request to the VM instead of waiting for the VM's answer.
        """
        app = web.Application(
            handler_args={"max_line_size": MAX_HEADER_BYTES, "max_field_size": MAX_HEADER_BYTES}
        )
        app.router.add_route("*", "/{path:.*}", self._handle)
        app.cleanup_ctx.append(_client_session)
        app.cleanup_ctx.append(self._sweeping)
        return app

    async def _sweeping(self, app: web.Application) -> AsyncIterator[None]:
        sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="node-proxy-sweep")
        yield
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper

    async def _sweep(self) -> None:
        """Cut the relays whose sandbox is gone (see the module docstring)."""
        while True:
            await asyncio.sleep(STREAM_CHECK_S)
            for task, target in list(self._relays.items()):
                if task in self._cut or self._directory.lookup(target.sandbox_id) == target:
                    continue
                _log.info("sandbox %s is gone: cutting its open relay", target.sandbox_id)
                self._cut.add(task)
                task.cancel()

    async def start(self, host: str = "0.0.0.0", port: int = DEFAULT_PORT) -> tuple[str, int]:
        """Listen on ``host:port`` (0 picks a free port); returns the bound address. Raises ProxyError."""
        if self._runner is not None:
            raise ProxyError("the node proxy is already running: stop it before starting it again")
        runner = web.AppRunner(
            self.application(),
            keepalive_timeout=IDLE_TIMEOUT_S,
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_GRACE_S,
            access_log=None,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ProxyError(
                f"the node proxy cannot listen on {host}:{port}: {exc}; pick a free port"
            ) from exc
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        return str(bound_host), int(bound_port)

    async def stop(self) -> None:
        """Stop listening, give requests in flight ``_SHUTDOWN_GRACE_S``, then close every connection.

        Streams that never end (SSE, WebSockets) are cut after the grace period. Safe to call
        when stopped.
        """
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def _node_page(self, path: str) -> NodeRoute | None:
        for prefix, page in self._node_routes.items():
            if path == prefix or path.startswith(prefix + "/"):
                return page
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.counters.requests += 1
        task = asyncio.current_task()
        try:
            outcome, response = await self._serve(request)
        except asyncio.CancelledError:
            if task in self._cut:  # its sandbox is gone: the client learns it from a broken connection
                abort(request)
                self.counters.record(ProxyOutcome.SANDBOX_GONE)
            else:  # the client went away; aiohttp cancels its handler
                self.counters.record(ProxyOutcome.CLIENT_GONE)
            raise
        finally:
            if task is not None:
                self._relays.pop(task, None)
                self._cut.discard(task)
        self.counters.record(outcome)
        return response

    async def _serve(self, request: web.Request) -> tuple[ProxyOutcome, web.StreamResponse]:
        try:
            route = route_request(request.host, request.headers, self._domain)
        except RouteError as exc:
            page = self._node_page(request.path)
            if page is not None and _addresses_the_node(request):
                return ProxyOutcome.NODE_PAGE, await page(request)
            return ProxyOutcome.INVALID_ROUTE, plain_error(400, exc.message)
        raw_path = request.rel_url.raw_path
        if is_envd_control_route(route, raw_path):
            path = urllib.parse.unquote(raw_path)
            body: dict[str, str | int] = {"message": RESERVED_ROUTE_MESSAGE, "path": path, "code": 404}
            return ProxyOutcome.RESERVED_ROUTE, json_error(404, body)
        target = self._directory.lookup(route.sandbox_id)
        if target is None:
            body = {"sandboxId": route.sandbox_id, "message": SANDBOX_NOT_FOUND_MESSAGE, "code": 502}
            return ProxyOutcome.SANDBOX_NOT_FOUND, json_error(502, body)
        if route.port != ENVD_PORT and target.traffic_access_token is not None:
            given = request.headers.get(TRAFFIC_TOKEN_HEADER)
            if given is None:
                return ProxyOutcome.TOKEN_MISSING, plain_error(403, TOKEN_MISSING_MESSAGE)
            if not hmac.compare_digest(given.encode(), target.traffic_access_token.encode()):
                return ProxyOutcome.TOKEN_INVALID, plain_error(403, TOKEN_INVALID_MESSAGE)
        session = request.app[_SESSION]
        url = URL.build(
            scheme="http",
            host=target.host,
            port=route.port,
            path=request.rel_url.raw_path,
            query_string=request.rel_url.raw_query_string,
            encoded=True,
        )
        headers = _upstream_headers(request, target, route)
        task = asyncio.current_task()
        if task is not None:
            self._relays[task] = target
        try:
            if is_websocket_upgrade(request):
                return await relay_websocket(request, session, url, headers)
            return await relay_http(request, session, url, headers)
        except PortNotOpen:
            body = {
                "sandboxId": route.sandbox_id,
                "message": PORT_NOT_OPEN_MESSAGE,
                "port": route.port,
                "code": 502,
            }
            return ProxyOutcome.PORT_NOT_OPEN, json_error(502, body)


def _addresses_the_node(request: web.Request) -> bool:
    """A request for the node itself: no sandbox headers, Host ``localhost`` or an IP literal."""
    if SANDBOX_ID_HEADER in request.headers or SANDBOX_PORT_HEADER in request.headers:
        return False
    host = (request.host or "").rsplit(":", 1)[0].strip("[]").lower()
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    """The application's client to the VMs: no keep-alive, no cookie jar, no timeout on streams."""
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with relay_session(connector) as session:
        app[_SESSION] = session
        yield


def _upstream_headers(request: web.Request, target: ProxyTarget, route: Route) -> CIMultiDict[str]:
    """What the VM receives: the client's end-to-end headers, Host kept unless masked.

    ``Expect`` is dropped: aiohttp has already answered ``100 Continue`` to the client.
    """
    headers = end_to_end(request.headers)
    headers.popall("Expect", None)
    if target.mask_request_host is not None and route.port != ENVD_PORT:
        original_host = request.headers.get("Host", "")
        headers["Host"] = target.mask_request_host.replace("${PORT}", str(route.port))
        headers["X-Forwarded-Host"] = original_host
    return headers

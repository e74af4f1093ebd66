"""Relaying HTTP and WebSockets to a sandbox, for both of E2B's proxies (the node's and the edge).

Both proxies pass requests through without buffering: the request body is streamed to the
upstream as it arrives, the response back as the upstream writes it, and a WebSocket is
bridged message by message after each side's own handshake. Hop-by-hop headers stay on their
own leg (RFC 9110 7.6.1). A dial that fails is retried (the VM may still be opening its port);
once anything was sent, nothing is retried. Every function answers with the ``ProxyOutcome``
it ended in, which the proxies count.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Waits between the 5 dial attempts.
DIAL_BACKOFF_S = (0.1, 0.2, 0.3, 0.4)
# One attempt's bound, for a slot that drops SYNs instead of refusing them.
DIAL_TIMEOUT_S = 30.0

# ember's own wording: the connection to the VM broke before its response began.
UPSTREAM_FAILED_MESSAGE = "The sandbox closed the connection before answering"

# RFC 9110 section 7.6.1, plus Proxy-Connection, which old clients still send.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# aiohttp adds these to a client request unless told not to; the VM gets only what the client sent.
NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
# aiohttp's WebSocket ends negotiate these themselves, each on its own leg.
WEBSOCKET_HANDSHAKE = (
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Protocol",
)
# Close codes that must not be sent in a close frame (RFC 6455 section 7.4.1).
UNSENDABLE_CLOSE_CODES = frozenset({1005, 1006, 1015})
# Big cookies and tokens are common behind sandbox URLs; aiohttp's default is 8 KiB.
MAX_HEADER_BYTES = 64 * 1024


class ProxyOutcome(enum.Enum):
    """How one request ended; the metric label."""

    PROXIED = "proxied"
    WEBSOCKET = "websocket"
    INVALID_ROUTE = "invalid_route"
    RESERVED_ROUTE = "reserved_route"
    SANDBOX_NOT_FOUND = "sandbox_not_found"
    TOKEN_MISSING = "token_missing"
    TOKEN_INVALID = "token_invalid"
    PORT_NOT_OPEN = "port_not_open"
    UPSTREAM_FAILED = "upstream_failed"
    CLIENT_GONE = "client_gone"
    SANDBOX_GONE = "sandbox_gone"
    NODE_PAGE = "node_page"


def relay_session(connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
    """A client for relaying: bodies passed as they are (no decompression), no cookie jar, no
    automatic headers, a bound on the dial only (streams may last for hours), big headers."""
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=DIAL_TIMEOUT_S),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=NO_AUTO_HEADERS,
        max_line_size=MAX_HEADER_BYTES,
        max_field_size=MAX_HEADER_BYTES,
    )


class PortNotOpen(Exception):
    """Every dial attempt failed; the handler answers 502."""


def json_error(status: int, body: dict[str, str | int]) -> web.Response:
    """An error answer; ``body`` keeps the key order of the original's answer."""
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        content_type="application/json",
    )


def plain_error(status: int, message: str) -> web.Response:
    return json_error(status, {"code": status, "message": message})


def end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """``headers`` without hop-by-hop ones, including those the Connection header names."""
    named = {
        token.strip().lower() for value in headers.getall("Connection", ()) for token in value.split(",")
    }
    kept: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lowered = name.lower()
        if lowered not in HOP_BY_HOP and lowered not in named:
            kept.add(name, value)
    return kept


def is_websocket_upgrade(request: web.Request) -> bool:
    connection = {token.strip().lower() for token in request.headers.get("Connection", "").split(",")}
    return "upgrade" in connection and request.headers.get("Upgrade", "").lower() == "websocket"


async def dial_with_retries(attempt: Callable[[], Awaitable[_T]]) -> _T:
    """``attempt()`` until it connects: 5 tries with backoff; raises PortNotOpen after the last.

    Only a failed dial is retried (refused, unreachable, timed out): nothing was sent yet.
    """
    for wait_s in (*DIAL_BACKOFF_S, None):
        try:
            return await attempt()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            if wait_s is None:
                raise PortNotOpen from exc
            await asyncio.sleep(wait_s)
    raise AssertionError("unreachable: the last attempt returns or raises")


async def relay_http(
    request: web.Request, session: aiohttp.ClientSession, url: URL, headers: CIMultiDict[str]
) -> tuple[ProxyOutcome, web.StreamResponse]:
    """One request to the VM; the response streams back as it arrives."""

    async def attempt() -> aiohttp.ClientResponse:
        # A fresh body reader per attempt: a failed dial never started the previous one.
        body = request_body(request) if request.body_exists else None
        return await session.request(request.method, url, headers=headers, data=body, allow_redirects=False)

    try:
        upstream = await dial_with_retries(attempt)
    except aiohttp.ClientError as exc:
        _log.info("upstream %s failed before answering: %s", url, exc)
        return ProxyOutcome.UPSTREAM_FAILED, plain_error(502, UPSTREAM_FAILED_MESSAGE)
    async with upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(end_to_end(upstream.headers))
        try:
            await response.prepare(request)
        except ConnectionError:
            return ProxyOutcome.CLIENT_GONE, response
        while True:
            try:
                chunk = await upstream.content.readany()
            except aiohttp.ClientError as exc:
                # The status is out: only a broken connection tells the client its body is cut short.
                _log.info("upstream %s broke mid-response: %s", url, exc)
                abort(request)
                return ProxyOutcome.UPSTREAM_FAILED, response
            if not chunk:
                break
            try:
                await response.write(chunk)
            except ConnectionError:
                return ProxyOutcome.CLIENT_GONE, response
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return ProxyOutcome.PROXIED, response


async def request_body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_any():
        yield chunk


def abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


async def relay_websocket(
    request: web.Request, session: aiohttp.ClientSession, url: URL, headers: CIMultiDict[str]
) -> tuple[ProxyOutcome, web.StreamResponse]:
    """Handshake with the VM first, so a refused upgrade reaches the client as the VM's status."""
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    for name in WEBSOCKET_HANDSHAKE:
        headers.popall(name, None)

    async def attempt() -> aiohttp.ClientWebSocketResponse:
        return await session.ws_connect(
            url,
            headers=headers,
            protocols=protocols,
            autoping=False,
            max_msg_size=0,
        )

    try:
        upstream = await dial_with_retries(attempt)
    except aiohttp.WSServerHandshakeError as exc:
        refused = web.Response(status=exc.status)
        if exc.headers is not None:
            refused.headers.extend(end_to_end(CIMultiDictProxy(CIMultiDict(exc.headers))))
        refused.headers.popall("Content-Length", None)
        return ProxyOutcome.PROXIED, refused
    except aiohttp.ClientError as exc:
        _log.info("upstream websocket %s failed: %s", url, exc)
        return ProxyOutcome.UPSTREAM_FAILED, plain_error(502, UPSTREAM_FAILED_MESSAGE)
    async with upstream:
        client = web.WebSocketResponse(
            protocols=[upstream.protocol] if upstream.protocol else (), autoping=False, max_msg_size=0
        )
        try:
            await client.prepare(request)
        except ConnectionError:
            return ProxyOutcome.CLIENT_GONE, client
        to_vm = asyncio.create_task(pump(client, upstream))
        to_client = asyncio.create_task(pump(upstream, client))
        try:
            done, _ = await asyncio.wait({to_vm, to_client}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this handler is cancelled: no pump outlives the session
            for task in (to_vm, to_client):
                task.cancel()
            await asyncio.gather(to_vm, to_client, return_exceptions=True)
        # Whichever side closed first gives the close code to the other.
        code = sendable_close_code(upstream.close_code if to_client in done else client.close_code)
        await client.close(code=code)
        await upstream.close(code=code)
        return ProxyOutcome.WEBSOCKET, client


async def pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    """Copy messages until ``source`` closes or errs; pings and pongs pass through too."""
    with contextlib.suppress(ConnectionError, aiohttp.ClientError):
        async for message in source:
            if message.type == WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            elif message.type == WSMsgType.PING:
                await sink.ping(message.data)
            elif message.type == WSMsgType.PONG:
                await sink.pong(message.data)
            elif message.type == WSMsgType.ERROR:
                return


def sendable_close_code(code: int | None) -> int:
    """The peer's close code, or 1000 when it sent none or one that cannot be sent on."""
    if code is None or code in UNSENDABLE_CLOSE_CODES:
        return 1000
    return code

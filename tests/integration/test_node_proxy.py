"""The node proxy between real clients (curl, httpx, aiohttp) and a real upstream on loopback.

The "VM" is an aiohttp server on a random 127.x.y.z address (so it can also own envd's port
49983 without clashing with anything on 127.0.0.1); the proxy runs beside it on an event loop
in a thread of the test process, over a dict-backed ``SandboxDirectory``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import random
import socket
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import httpx
import pytest
from aiohttp import web

from ember.orchestrator.proxy import PORT_NOT_OPEN_MESSAGE, NodeProxy, ProxyError, ProxyOutcome, ProxyTarget
from ember.traffic.routing import (
    ENVD_PORT,
    INVALID_HOST,
    INVALID_SANDBOX_ID,
    INVALID_SANDBOX_PORT,
    MISSING_HEADER,
    RESERVED_ROUTE_MESSAGE,
    SANDBOX_NOT_FOUND_MESSAGE,
    TOKEN_INVALID_MESSAGE,
    TOKEN_MISSING_MESSAGE,
)

DOMAIN = "sandboxes.test"
TOKEN = "s3cret-token"
_T = TypeVar("_T")


class _LoopThread:
    """An asyncio loop in a daemon thread; ``run`` a coroutine on it from the test thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="node-proxy-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout_s: float = 30.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class _Directory:
    targets: dict[str, ProxyTarget] = field(default_factory=dict)

    def lookup(self, sandbox_id: str) -> ProxyTarget | None:
        return self.targets.get(sandbox_id)


@dataclass
class _Upstream:
    """What the stand-in VM saw and when; written on the loop, read after the response."""

    second_chunk_written_at: float = 0.0
    upload_chunk_seen: threading.Event = field(default_factory=threading.Event)
    upload_sizes: list[int] = field(default_factory=list)
    endless_stream_dropped: threading.Event = field(default_factory=threading.Event)

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/stream", self._stream)
        app.router.add_get("/forever", self._forever)
        app.router.add_get("/truncated", self._truncated)
        app.router.add_route("POST", "/upload", self._upload)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/gzip", self._gzip)
        app.router.add_get("/big", self._big)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        return app

    async def _echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        seen = {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": [[name, value] for name, value in request.headers.items()],
            "body": body.decode(errors="replace"),
            "port": request.transport.get_extra_info("sockname")[1] if request.transport else None,
        }
        response = web.json_response(seen, headers={"X-Upstream": "yes", "Keep-Alive": "timeout=5"})
        response.set_cookie("a", "1")
        response.headers.add("Set-Cookie", "b=2")
        return response

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await asyncio.sleep(1.0)
        self.second_chunk_written_at = time.monotonic()
        await response.write(b"data: second\n\n")
        await response.write_eof()
        return response

    async def _forever(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"tick")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:  # the proxy closed the connection (handler_cancellation)
            self.endless_stream_dropped.set()
            raise
        return response

    async def _truncated(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 100
        await response.prepare(request)
        await response.write(b"0123456789")
        await asyncio.sleep(0.1)
        assert request.transport is not None
        request.transport.abort()
        return response

    async def _upload(self, request: web.Request) -> web.Response:
        self.upload_sizes.clear()
        async for chunk in request.content.iter_any():
            self.upload_sizes.append(len(chunk))
            self.upload_chunk_seen.set()
        return web.json_response(
            {"bytes": sum(self.upload_sizes), "transfer_encoding": request.headers.get("Transfer-Encoding")}
        )

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("echo.v1",))
        await ws.prepare(request)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT and message.data == "bye":
                await ws.close(code=4001, message=b"asked to")
            elif message.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"echo:{message.data}")
            elif message.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        return ws

    async def _gzip(self, request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(b"zipped " * 100), headers={"Content-Encoding": "gzip"})

    async def _big(self, request: web.Request) -> web.Response:
        return web.Response(body=bytes(range(256)) * 4096)


@dataclass
class _Env:
    loop: _LoopThread
    proxy: NodeProxy
    proxy_url: str
    directory: _Directory
    upstream: _Upstream
    vm_ip: str
    app_port: int

    def host(self, sandbox_id: str, port: int | None = None) -> str:
        return f"{self.app_port if port is None else port}-{sandbox_id}.{DOMAIN}"

    def closed_port(self) -> int:
        with socket.socket() as probe:
            probe.bind((self.vm_ip, 0))
            port: int = probe.getsockname()[1]
            return port


async def _serve(app: web.Application, ip: str, ports: list[int]) -> web.AppRunner:
    runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    for port in ports:
        await web.TCPSite(runner, ip, port).start()
    return runner


@pytest.fixture(scope="module")
def env() -> Iterator[_Env]:
    loop = _LoopThread()
    vm_ip = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    upstream = _Upstream()
    runner = loop.run(_serve(upstream.application(), vm_ip, [0, ENVD_PORT]))
    app_port = next(port for _, port in runner.addresses if port != ENVD_PORT)
    directory = _Directory(
        {
            "open1": ProxyTarget("open1", vm_ip, None),
            "secure1": ProxyTarget("secure1", vm_ip, TOKEN),
            "masked1": ProxyTarget("masked1", vm_ip, None, mask_request_host="app.internal:${PORT}"),
        }
    )
    proxy = NodeProxy(directory, DOMAIN)
    host, port = loop.run(proxy.start("127.0.0.1", 0))
    try:
        yield _Env(loop, proxy, f"http://{host}:{port}", directory, upstream, vm_ip, app_port)
    finally:
        loop.run(proxy.stop())
        loop.run(runner.cleanup())
        loop.close()


@pytest.fixture
def client(env: _Env) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=env.proxy_url, timeout=30.0) as http:
        yield http


def _curl(env: _Env, path: str, *args: str) -> tuple[int, str]:
    """curl through the proxy with ``--path-as-is`` (no dot-segment folding); (status, body)."""
    result = subprocess.run(
        ["curl", "-sS", "--path-as-is", "-o", "-", "-w", "\n%{http_code}", *args, env.proxy_url + path],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def _settled(proxy: NodeProxy, expected_requests: int) -> dict[str, int]:
    """The counters once every request counted in ``requests`` has recorded its outcome.

    An outcome is recorded when the handler returns, which can be just after the client has
    read the whole response.
    """
    deadline = time.monotonic() + 10
    while True:
        snapshot = proxy.counters.snapshot()
        recorded = sum(snapshot.values()) - snapshot["requests"]
        if recorded >= expected_requests or time.monotonic() > deadline:
            return snapshot
        time.sleep(0.02)


def _seen_headers(response: httpx.Response) -> dict[str, str]:
    return {name.lower(): value for name, value in response.json()["headers"]}


# --- routing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", f"sandbox.{DOMAIN}", f"sandbox.{DOMAIN}:5007"])
def test_headers_route_when_the_host_names_no_sandbox(env: _Env, client: httpx.Client, host: str) -> None:
    headers = {"Host": host, "E2b-Sandbox-Id": "open1", "E2b-Sandbox-Port": str(env.app_port)}
    response = client.get("/echo", headers=headers)
    assert response.status_code == 200
    assert response.json()["port"] == env.app_port
    assert _seen_headers(response)["host"] == host  # passed through, not rewritten


def test_headers_route_with_curl(env: _Env) -> None:
    status, body = _curl(
        env,
        "/hello",
        "-H",
        "Host: localhost",
        "-H",
        "E2b-Sandbox-Id: open1",
        "-H",
        f"E2b-Sandbox-Port: {env.app_port}",
    )
    assert status == 200
    assert json.loads(body)["raw_path"] == "/hello"


def test_host_routing_reaches_the_port_in_the_first_label(env: _Env, client: httpx.Client) -> None:
    response = client.get("/echo/a%20b?x=1&y=%2F", headers={"Host": env.host("open1")})
    assert response.status_code == 200
    seen = response.json()
    assert seen["raw_path"] == "/echo/a%20b?x=1&y=%2F"  # path and query reach the VM as sent
    assert _seen_headers(response)["host"] == env.host("open1")
    assert "x-forwarded-host" not in _seen_headers(response)
    assert "x-forwarded-for" not in _seen_headers(response)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Host": "localhost", "E2b-Sandbox-Id": "open1"}, MISSING_HEADER),
        ({"Host": "127.0.0.1", "E2b-Sandbox-Port": "80"}, MISSING_HEADER),
        ({"Host": "localhost", "E2b-Sandbox-Id": "open1", "E2b-Sandbox-Port": "http"}, INVALID_SANDBOX_PORT),
        ({"Host": "localhost"}, INVALID_HOST),
        ({"Host": f"3000.{DOMAIN}"}, INVALID_HOST),
        ({"Host": f"3000-Open1.{DOMAIN}"}, INVALID_SANDBOX_ID),
        ({"Host": "localhost", "E2b-Sandbox-Id": "open_1", "E2b-Sandbox-Port": "80"}, INVALID_SANDBOX_ID),
    ],
)
def test_requests_that_name_no_sandbox_are_400(
    client: httpx.Client, headers: dict[str, str], message: str
) -> None:
    response = client.get("/", headers=headers)
    assert response.status_code == 400
    assert response.json() == {"code": 400, "message": message}


def test_invalid_host_with_curl(env: _Env) -> None:
    assert _curl(env, "/", "-H", "Host: nodots") == (
        400,
        json.dumps({"code": 400, "message": INVALID_HOST}, separators=(",", ":")),
    )


# --- envd control routes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/init", "/init/", "//init", "/%69nit", "/a/../init", "/./init", "/upgrade", "/freeze", "/unfreeze",
     "/fsfreeze", "/fsthaw", "/collapse", "/init?x=1"],
)  # fmt: skip
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_envd_control_routes_are_refused_before_the_lookup(env: _Env, path: str, method: str) -> None:
    # "nosuchbox" is not on the node: the 404 proves the refusal comes before the lookup.
    status, body = _curl(env, path, "-X", method, "-H", f"Host: {ENVD_PORT}-nosuchbox.{DOMAIN}")
    assert status == 404
    decoded_path = path.partition("?")[0].replace("%69", "i")
    assert json.loads(body) == {"message": RESERVED_ROUTE_MESSAGE, "path": decoded_path, "code": 404}
    assert list(json.loads(body)) == ["message", "path", "code"]


def test_envd_control_paths_on_an_app_port_reach_the_sandbox(env: _Env) -> None:
    status, body = _curl(env, "/init", "-X", "POST", "-H", f"Host: {env.host('open1')}")
    assert status == 200
    assert json.loads(body)["raw_path"] == "/init"


def test_other_envd_paths_reach_envd_without_a_traffic_token(env: _Env, client: httpx.Client) -> None:
    response = client.get("/health", headers={"Host": env.host("secure1", ENVD_PORT)})
    assert response.status_code == 200
    assert response.json()["port"] == ENVD_PORT


# --- lookup and token ------------------------------------------------------------------------


def test_unknown_sandbox_is_502_with_the_exact_body(env: _Env) -> None:
    status, body = _curl(env, "/", "-H", f"Host: {env.host('nosuchbox')}")
    assert status == 502
    assert body == '{"sandboxId":"nosuchbox","message":"' + SANDBOX_NOT_FOUND_MESSAGE + '","code":502}'


def test_traffic_token_missing(env: _Env, client: httpx.Client) -> None:
    response = client.get("/", headers={"Host": env.host("secure1")})
    assert response.status_code == 403
    assert response.json() == {"code": 403, "message": TOKEN_MISSING_MESSAGE}
    assert TOKEN_MISSING_MESSAGE == (
        "Sandbox is secured with traffic access token. Token header 'e2b-traffic-access-token' is missing"
    )


def test_traffic_token_wrong(env: _Env, client: httpx.Client) -> None:
    response = client.get("/", headers={"Host": env.host("secure1"), "e2b-traffic-access-token": "nope"})
    assert response.status_code == 403
    assert response.json() == {"code": 403, "message": TOKEN_INVALID_MESSAGE}
    assert TOKEN_INVALID_MESSAGE == (
        "Sandbox is secured with traffic access token. "
        "Provided token in header 'e2b-traffic-access-token' is invalid"
    )


def test_traffic_token_right(env: _Env) -> None:
    status, body = _curl(
        env, "/ok", "-H", f"Host: {env.host('secure1')}", "-H", f"E2B-Traffic-Access-Token: {TOKEN}"
    )
    assert status == 200
    assert json.loads(body)["raw_path"] == "/ok"


# --- dialing ---------------------------------------------------------------------------------


def test_a_closed_port_is_502_after_five_dials(env: _Env, client: httpx.Client) -> None:
    port = env.closed_port()
    started = time.monotonic()
    response = client.get("/", headers={"Host": env.host("open1", port)})
    elapsed_s = time.monotonic() - started
    assert response.status_code == 502
    assert response.content == (
        b'{"sandboxId":"open1","message":"'
        + PORT_NOT_OPEN_MESSAGE.encode()
        + b'","port":%d,"code":502}' % port
    )
    assert elapsed_s >= 0.1 + 0.2 + 0.3 + 0.4  # four backoffs between the five attempts


def test_a_port_that_opens_during_the_retries_is_reached(env: _Env, client: httpx.Client) -> None:
    port = env.closed_port()

    async def open_later() -> web.AppRunner:
        await asyncio.sleep(0.4)
        return await _serve(env.upstream.application(), env.vm_ip, [port])

    opening = asyncio.run_coroutine_threadsafe(open_later(), env.loop.loop)
    try:
        response = client.post("/late", headers={"Host": env.host("open1", port)}, content=b"kept")
        assert response.status_code == 200
        assert response.json()["port"] == port
        assert response.json()["body"] == "kept"  # the body was not spent on the failed dials
    finally:
        env.loop.run(opening.result(10).cleanup())


# --- headers ---------------------------------------------------------------------------------


def test_hop_by_hop_headers_stop_at_the_proxy(env: _Env) -> None:
    status, body = _curl(
        env,
        "/echo",
        "-H", f"Host: {env.host('open1')}",
        "-H", "Connection: keep-alive, X-Drop-Me",
        "-H", "X-Drop-Me: 1",
        "-H", "Keep-Alive: timeout=5",
        "-H", "Proxy-Connection: keep-alive",
        "-H", "TE: trailers",
        "-H", "X-Keep-Me: 2",
        "-H", "User-Agent:",
        "-H", "Accept:",
    )  # fmt: skip
    assert status == 200
    seen = {name.lower() for name, _ in json.loads(body)["headers"]}
    assert not seen & {"x-drop-me", "keep-alive", "proxy-connection", "te", "user-agent", "accept"}
    assert "x-keep-me" in seen
    assert dict((name.lower(), value) for name, value in json.loads(body)["headers"])["connection"] == "close"
    assert "accept-encoding" not in seen  # nothing the client did not send


def test_response_headers_pass_through_without_hop_by_hop_ones(env: _Env, client: httpx.Client) -> None:
    response = client.get("/echo", headers={"Host": env.host("open1")})
    assert response.headers["X-Upstream"] == "yes"
    assert "keep-alive" not in response.headers
    assert sorted(response.headers.get_list("set-cookie")) == ["a=1; Path=/", "b=2"]


def test_mask_request_host_replaces_the_host_and_keeps_the_original(env: _Env, client: httpx.Client) -> None:
    response = client.get("/echo", headers={"Host": env.host("masked1")})
    seen = _seen_headers(response)
    assert seen["host"] == f"app.internal:{env.app_port}"
    assert seen["x-forwarded-host"] == env.host("masked1")


def test_mask_request_host_is_not_applied_to_envd(env: _Env, client: httpx.Client) -> None:
    response = client.get("/health", headers={"Host": env.host("masked1", ENVD_PORT)})
    seen = _seen_headers(response)
    assert seen["host"] == env.host("masked1", ENVD_PORT)
    assert "x-forwarded-host" not in seen


def test_content_encoding_and_length_pass_through_untouched(env: _Env, client: httpx.Client) -> None:
    with client.stream("GET", "/gzip", headers={"Host": env.host("open1")}) as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Content-Length"] == str(len(raw))
    assert "Transfer-Encoding" not in response.headers
    assert gzip.decompress(raw) == b"zipped " * 100


def test_a_large_body_arrives_whole(env: _Env, client: httpx.Client) -> None:
    response = client.get("/big", headers={"Host": env.host("open1")})
    assert response.content == bytes(range(256)) * 4096
    assert response.headers["Content-Length"] == str(256 * 4096)


def test_head_has_no_body(env: _Env, client: httpx.Client) -> None:
    response = client.head("/big", headers={"Host": env.host("open1")})
    assert response.status_code == 200
    assert response.content == b""


# --- streaming -------------------------------------------------------------------------------


def test_a_streamed_response_arrives_chunk_by_chunk(env: _Env, client: httpx.Client) -> None:
    with client.stream("GET", "/stream", headers={"Host": env.host("open1")}) as response:
        chunks = response.iter_raw()
        first = next(chunks)
        first_arrived_at = time.monotonic()
        rest = b"".join(chunks)
    assert first == b"data: first\n\n"
    assert rest == b"data: second\n\n"
    assert first_arrived_at < env.upstream.second_chunk_written_at


def test_a_chunked_request_body_streams_to_the_vm(env: _Env, client: httpx.Client) -> None:
    env.upstream.upload_chunk_seen.clear()

    def body() -> Iterator[bytes]:
        yield b"x" * 1000
        # A proxy that buffered the body would never let the VM see this first chunk.
        assert env.upstream.upload_chunk_seen.wait(10), "the VM got nothing before the body ended"
        yield b"y" * 2000

    response = client.post("/upload", headers={"Host": env.host("open1")}, content=body())
    assert response.json() == {"bytes": 3000, "transfer_encoding": "chunked"}
    assert len(env.upstream.upload_sizes) >= 2


def test_a_large_upload_with_expect_100_continue(env: _Env, tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    payload.write_bytes(b"z" * (3 << 20))
    status, body = _curl(
        env, "/upload", "-H", f"Host: {env.host('open1')}", "-H", "Expect: 100-continue",
        "--data-binary", f"@{payload}",
    )  # fmt: skip
    assert status == 200
    assert json.loads(body) == {"bytes": 3 << 20, "transfer_encoding": None}


def test_a_request_body_with_a_length_keeps_it(env: _Env, client: httpx.Client) -> None:
    response = client.post("/echo", headers={"Host": env.host("open1")}, content=b"hello")
    assert response.json()["body"] == "hello"
    assert _seen_headers(response)["content-length"] == "5"


def test_a_vm_that_breaks_mid_body_breaks_the_client_connection(
    env: _Env, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    before = _settled(env.proxy, env.proxy.counters.requests)
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/truncated", headers={"Host": env.host("open1")})
    assert _settled(env.proxy, before["requests"] + 1)["upstream_failed"] == before["upstream_failed"] + 1
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_client_that_leaves_a_stream_drops_it(env: _Env, client: httpx.Client) -> None:
    env.upstream.endless_stream_dropped.clear()
    before = _settled(env.proxy, env.proxy.counters.requests)
    with client.stream("GET", "/forever", headers={"Host": env.host("open1")}) as response:
        assert next(response.iter_raw()) == b"tick"
    assert _settled(env.proxy, before["requests"] + 1)["client_gone"] == before["client_gone"] + 1
    assert env.upstream.endless_stream_dropped.wait(10), "the VM's side of the stream is still open"


def test_a_stream_to_a_sandbox_that_goes_away_is_cut(env: _Env, client: httpx.Client) -> None:
    """A paused or killed guest never closes its streams: the proxy cuts them for it."""
    env.upstream.endless_stream_dropped.clear()
    env.directory.targets["vanishing1"] = ProxyTarget("vanishing1", env.vm_ip, None)
    before = _settled(env.proxy, env.proxy.counters.requests)
    with client.stream("GET", "/forever", headers={"Host": env.host("vanishing1")}) as response:
        chunks = response.iter_raw()
        assert next(chunks) == b"tick"
        del env.directory.targets["vanishing1"]
        cut_at = time.monotonic()
        with pytest.raises(httpx.RemoteProtocolError):
            next(chunks)
    assert time.monotonic() - cut_at < 10
    assert _settled(env.proxy, before["requests"] + 1)["sandbox_gone"] == before["sandbox_gone"] + 1
    assert env.upstream.endless_stream_dropped.wait(10), "the VM's side of the stream is still open"


def test_a_stream_to_a_sandbox_that_stays_is_not_cut(env: _Env, client: httpx.Client) -> None:
    with client.stream("GET", "/stream", headers={"Host": env.host("open1")}) as response:
        assert b"".join(response.iter_raw()) == b"data: first\n\ndata: second\n\n"


# --- websocket -------------------------------------------------------------------------------


def test_a_websocket_echo_through_the_proxy(env: _Env) -> None:
    async def talk() -> tuple[str | None, str, bytes, int | None]:
        url = f"{env.proxy_url}/ws"
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(url, headers={"Host": env.host("open1")}, protocols=("echo.v1",)) as ws,
        ):
            await ws.send_str("hi")
            text = (await ws.receive(5)).data
            await ws.send_bytes(b"abc")
            data = (await ws.receive(5)).data
            await ws.send_str("bye")
            closing = await ws.receive(5)
            assert closing.type == aiohttp.WSMsgType.CLOSE
            return ws.protocol, text, data, ws.close_code

    protocol, text, data, close_code = asyncio.run(talk())
    assert (protocol, text, data, close_code) == ("echo.v1", "echo:hi", b"cba", 4001)


def test_a_refused_websocket_upgrade_keeps_the_vm_status(env: _Env, client: httpx.Client) -> None:
    headers = {
        "Host": env.host("open1"),
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    response = client.get("/big", headers=headers)  # not a WebSocket endpoint on the VM
    assert response.status_code == 200
    assert response.content == b""


# --- the proxy object ------------------------------------------------------------------------


def test_counters_count_each_outcome(env: _Env, client: httpx.Client) -> None:
    before = _settled(env.proxy, env.proxy.counters.requests)
    client.get("/", headers={"Host": "localhost"})
    client.get("/init", headers={"Host": env.host("open1", ENVD_PORT)})
    client.get("/", headers={"Host": env.host("nosuchbox")})
    client.get("/", headers={"Host": env.host("secure1")})
    client.get("/echo", headers={"Host": env.host("open1")})
    after = _settled(env.proxy, before["requests"] + 5)
    delta = {name: after[name] - before[name] for name in after}
    assert delta == {
        "requests": 5,
        **{outcome.value: 0 for outcome in ProxyOutcome},
        "invalid_route": 1,
        "reserved_route": 1,
        "sandbox_not_found": 1,
        "token_missing": 1,
        "proxied": 1,
    }


def test_start_twice_and_stop_twice(env: _Env) -> None:
    proxy = NodeProxy(env.directory, None)
    env.loop.run(proxy.start("127.0.0.1", 0))
    try:
        with pytest.raises(ProxyError, match="already running"):
            env.loop.run(proxy.start("127.0.0.1", 0))
    finally:
        env.loop.run(proxy.stop())
    env.loop.run(proxy.stop())


def test_a_busy_port_is_a_proxy_error(env: _Env) -> None:
    busy = int(env.proxy_url.rpartition(":")[2])
    with pytest.raises(ProxyError, match="cannot listen"):
        env.loop.run(NodeProxy(env.directory, None).start("127.0.0.1", busy))


def test_stopping_cuts_an_endless_stream(env: _Env) -> None:
    proxy = NodeProxy(env.directory, DOMAIN)
    host, port = env.loop.run(proxy.start("127.0.0.1", 0))
    with (
        httpx.Client(base_url=f"http://{host}:{port}", timeout=30.0) as http,
        contextlib.ExitStack() as stack,
    ):
        response = stack.enter_context(http.stream("GET", "/forever", headers={"Host": env.host("open1")}))
        chunks = response.iter_raw()
        assert next(chunks) == b"tick"
        env.upstream.endless_stream_dropped.clear()
        env.loop.run(proxy.stop(), timeout_s=10)
        with pytest.raises(httpx.HTTPError):
            b"".join(chunks)
    assert env.upstream.endless_stream_dropped.wait(10), "the VM's side of the stream is still open"

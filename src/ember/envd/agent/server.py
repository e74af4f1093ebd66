"""The agent's HTTP/1.1 server: routes plain endpoints and Connect RPCs, streams replies.

One thread per connection (``ThreadingHTTPServer``), keep-alive on. RPC calls are
authenticated like every non-exempt route (``X-Access-Token`` once ``/init`` set a
token; a failure is HTTP 401 with a Connect error body, code ``unauthenticated``) and
pick their user from ``Authorization: Basic base64("<user>:")``. A streaming reply sends
its headers at once, then one chunk per envelope; when the client goes away mid-stream
the stream's generator is closed (which unsubscribes it) and the connection dropped.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import signal
import sys
import zlib
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, urlsplit

from . import connect, httpio
from .connect import Call, Code, Encoding, Method, RpcError, Shape
from .filesystem_service import FilesystemService
from .http_api import HttpApi, Reply, Request
from .process_service import ProcessService
from .processes import ProcessTable
from .state import HOST_TOKEN_HASH_PATH, AgentState
from .version import ENVD_VERSION

DEFAULT_PORT = 49983
_NOT_AUTHORIZED = "unauthorized access: send the access token in X-Access-Token"
FILE_BLOCK_BYTES = 1 << 20
GZIP_LEVEL = 1
"""Fast over small: the SDK asks for gzip on every read, and a TCG guest pays for each cycle."""


class Agent:
    """Everything the request threads share."""

    def __init__(self, token_hash_path: str = HOST_TOKEN_HASH_PATH) -> None:
        self.state = AgentState(token_hash_path)
        self.http_api = HttpApi(self.state)
        self.methods: dict[str, Method] = {}
        services = {
            "process.Process": ProcessService(self.state, ProcessTable()).methods(),
            "filesystem.Filesystem": FilesystemService(self.state).methods(),
        }
        for service, methods in services.items():
            for name, method in methods.items():
                self.methods[f"/{service}/{name}"] = method


def basic_auth_user(header: str | None) -> str | None:
    """The user name of ``Basic base64("<user>:")``; None when the header is absent."""
    if not header:
        return None
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "basic":
        raise RpcError(Code.UNAUTHENTICATED, f"Authorization scheme {scheme!r} is not Basic")
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise RpcError(Code.UNAUTHENTICATED, "Authorization: Basic credentials are not base64") from exc
    return decoded.partition(":")[0] or None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "envd"
    sys_version = ""
    fields: dict[str, str]
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.fields = {name.title(): value for name, value in self.headers.items()}
        method = self.server.agent.methods.get(url.path)
        try:
            if method is not None and self.command == "POST":
                self._serve_rpc(method)
                return
            request = Request(self.command, url.path, dict(parse_qsl(url.query)), self.fields, self.rfile)
            self._send_reply(self.server.agent.http_api.handle(request))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send_reply(self, reply: Reply) -> None:
        if reply.status >= 400:
            self.close_connection = True
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.content_type:
            self.send_header("Content-Type", reply.content_type)
        if reply.file_path is None:
            if reply.status != 204:
                self.send_header("Content-Length", str(len(reply.body)))
            self._end_headers()
            self.wfile.write(reply.body)
            return
        with open(reply.file_path, "rb") as handle:
            if reply.gzip:
                self._send_gzip(handle)
                return
            self.send_header("Content-Length", str(os.fstat(handle.fileno()).st_size))
            self._end_headers()
            while block := handle.read(FILE_BLOCK_BYTES):
                self.wfile.write(block)

    def _send_gzip(self, source: BinaryIO) -> None:
        """Stream ``source`` gzip-compressed in chunks: its compressed length is not known ahead."""
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Transfer-Encoding", "chunked")
        self._end_headers()
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        while block := source.read(FILE_BLOCK_BYTES):
            if packed := compressor.compress(block):
                self.wfile.write(httpio.chunk(packed))
        self.wfile.write(httpio.chunk(compressor.flush()) + httpio.LAST_CHUNK)

    def _end_headers(self) -> None:
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send_unary_error(self, error: RpcError, status: int | None = None) -> None:
        body = json.dumps(error.to_json()).encode()
        self._send_reply(Reply(status or connect.HTTP_STATUS[error.code], body, "application/json"))

    def _serve_rpc(self, method: Method) -> None:
        try:
            encoding = connect.parse_content_type(self.fields.get("Content-Type", ""), method.shape)
        except RpcError as exc:
            self._send_unary_error(exc, 415)
            return
        try:
            if not self.server.agent.state.token_matches(self.fields.get("X-Access-Token")):
                raise RpcError(Code.UNAUTHENTICATED, _NOT_AUTHORIZED)
            user = basic_auth_user(self.fields.get("Authorization"))
            call = Call(self.fields, user, connect.parse_timeout(self.fields))
        except RpcError as exc:
            self._send_unary_error(exc)
            return
        if method.shape is Shape.UNARY:
            self._serve_unary(method, encoding, call)
        else:
            self._serve_stream(method, encoding, call)

    def _serve_unary(self, method: Method, encoding: Encoding, call: Call) -> None:
        try:
            try:
                body = httpio.read_body(self.rfile, self.fields)
            except httpio.BodyError as exc:
                raise RpcError(Code.INVALID_ARGUMENT, str(exc)) from exc
            response = method.handler(call, encoding.decode(method.request_type, body))
            payload = encoding.encode(method.response_type, response)
        except RpcError as exc:
            self._send_unary_error(exc)
            return
        except Exception as exc:  # the error boundary of one call: report, keep serving
            self._send_unary_error(RpcError(Code.INTERNAL, f"{type(exc).__name__}: {exc}"))
            return
        self._send_reply(Reply(200, payload, f"application/{encoding.value}"))

    def _requests(self, method: Method, encoding: Encoding) -> Iterator[Any]:
        try:
            for payload in connect.iter_envelopes(self.rfile, self.fields):
                yield encoding.decode(method.request_type, payload)
        except httpio.BodyError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, str(exc)) from exc

    def _serve_stream(self, method: Method, encoding: Encoding, call: Call) -> None:
        """Read the whole request stream, then reply.

        Reply headers go out only after the request body was read to its end: an HTTP/1.1
        client that sees the response begin may cut its request body short (hyper does).
        """
        messages: Iterator[Any] = iter(())
        error: RpcError | None = None
        try:
            messages = self._open_stream(method, encoding, call)
        except RpcError as exc:
            error = exc
            self.close_connection = True
        except Exception as exc:  # the error boundary of one call: report, keep serving
            error = RpcError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")
            self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", f"application/connect+{encoding.value}")
        self.send_header("Transfer-Encoding", "chunked")
        self._end_headers()
        try:
            for message in messages:
                envelope = connect.envelope(encoding.encode(method.response_type, message))
                self.wfile.write(httpio.chunk(envelope))
        except RpcError as exc:
            error = exc
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        except Exception as exc:  # the error boundary of one call: report, keep serving
            error = RpcError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            close = getattr(messages, "close", None)
            if close is not None:
                close()
        self.wfile.write(httpio.chunk(connect.end_stream(error)) + httpio.LAST_CHUNK)

    def _open_stream(self, method: Method, encoding: Encoding, call: Call) -> Iterator[Any]:
        if method.shape is Shape.CLIENT_STREAM:
            return iter([method.handler(call, self._requests(method, encoding))])
        requests = list(self._requests(method, encoding))
        if len(requests) != 1:
            raise RpcError(Code.INVALID_ARGUMENT, f"expected 1 request message, got {len(requests)}")
        messages: Iterator[Any] = method.handler(call, requests[0])
        return messages


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], agent: Agent, verbose: bool) -> None:
        super().__init__(address, _Handler)
        self.agent = agent
        self.verbose = verbose


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="envd", description="E2B-compatible in-sandbox agent")
    parser.add_argument("--port", "-port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", "-host", default="0.0.0.0")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    parser.add_argument("--version", "-version", action="version", version=ENVD_VERSION)
    parser.add_argument(
        "--token-hash-file",
        default=HOST_TOKEN_HASH_PATH,
        help="where the host vouches for the access token (SHA-512 hex); default: QEMU fw_cfg",
    )
    options = parser.parse_args(argv)
    try:
        server = _Server((options.host, options.port), Agent(options.token_hash_file), options.verbose)
    except OSError as exc:
        print(f"envd: cannot listen on {options.host}:{options.port}: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"envd: listening on {options.host}:{options.port}", file=sys.stderr, flush=True)
    with server:
        server.serve_forever(poll_interval=0.2)
    return 0

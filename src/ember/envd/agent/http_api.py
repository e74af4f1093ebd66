"""envd's plain HTTP endpoints (``spec/envd.yaml``): health, init, envs, metrics, files.

Errors are JSON ``{"code": <HTTP status>, "message": "..."}`` like the original's. Once
``/init`` has set an access token, every request but ``GET /health`` and ``POST /init``
must carry it in ``X-Access-Token``; ``/files`` checks it itself, as the original does,
because signed URLs are its other way in: without the header, a request whose query is
signed for its path, user and operation (``signing``) is let in. A header that is sent
must be right: it is never overruled by a signature. ``/init`` answers with the agent's
version in ``X-Envd-Version``.

Uploads accept ``multipart/form-data`` (one part per file: the ``path`` query parameter
names a single file, otherwise each part's filename is its path) and
``application/octet-stream`` (optionally ``Content-Encoding: gzip``). ``X-Metadata-<key>``
headers become the written files' metadata (their whole set; keys lowercased). Both
answer with the list ``[{"path", "name", "type": "file"[, "metadata"]}]``. Downloads are
gzip-encoded when ``Accept-Encoding`` asks for it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from io import BufferedIOBase

from . import filesystem, httpio, signing
from .codec import CodecError, Message, parse_rfc3339
from .connect import HTTP_STATUS, Code, RpcError
from .metrics import MetricsSampler
from .state import AgentState, User, resolve_path
from .version import ENVD_VERSION

CLOCK_DRIFT_LIMIT_S = 1.0
METADATA_HEADER_PREFIX = "X-Metadata-"
VERSION_HEADER = "X-Envd-Version"
_NOT_AUTHORIZED = "unauthorized access: send the sandbox's access token in the X-Access-Token header"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = ""
    file_path: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    gzip: bool = False
    """Send ``file_path`` gzip-compressed (chunked, ``Content-Encoding: gzip``)."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    rfile: BufferedIOBase


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_reply(status: int, value: object) -> Reply:
    return Reply(status, json.dumps(value).encode(), "application/json")


def error_reply(status: int, message: str) -> Reply:
    return json_reply(status, {"code": status, "message": message})


def _from_rpc(error: RpcError) -> HttpError:
    status = 507 if error.code is Code.RESOURCE_EXHAUSTED else HTTP_STATUS[error.code]
    return HttpError(status, error.message)


class HttpApi:
    def __init__(self, state: AgentState) -> None:
        self._state = state
        self._metrics = MetricsSampler()

    def handle(self, request: Request) -> Reply:
        route = {
            ("GET", "/health"): self.health,
            ("POST", "/init"): self.init,
            ("GET", "/envs"): self.envs,
            ("GET", "/metrics"): self.metrics,
            ("GET", "/files"): self.download,
            ("POST", "/files"): self.upload,
        }.get((request.method, request.path))
        if route is None:
            return error_reply(404, f"no route {request.method} {request.path}")
        reply = self._route(route, request)
        if request.path == "/init":
            reply = replace(reply, headers={**reply.headers, VERSION_HEADER: ENVD_VERSION})
        return reply

    def _route(self, route: Callable[[Request], Reply], request: Request) -> Reply:
        try:
            if request.path not in ("/health", "/init", "/files") and not self._authorized(request):
                return error_reply(401, _NOT_AUTHORIZED)
            return route(request)
        except HttpError as exc:
            return error_reply(exc.status, exc.message)
        except RpcError as exc:
            error = _from_rpc(exc)
            return error_reply(error.status, error.message)

    def _authorized(self, request: Request) -> bool:
        return self._state.token_matches(request.headers.get("X-Access-Token"))

    def health(self, request: Request) -> Reply:
        return Reply(204)

    def init(self, request: Request) -> Reply:
        try:
            body = json.loads(httpio.read_body(request.rfile, request.headers) or b"{}")
        except (ValueError, httpio.BodyError) as exc:
            raise HttpError(400, f"init body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise HttpError(400, "init body must be a JSON object")
        token = body.get("accessToken")
        presented = request.headers.get("X-Access-Token")
        if token is not None:
            if not isinstance(token, str) or not token:
                raise HttpError(400, "accessToken must be a non-empty string")
            if not self._state.may_set_token(token, presented):
                raise HttpError(
                    401,
                    "access token cannot be set: send the current one in X-Access-Token, "
                    "or the one the host set for this sandbox",
                )
        elif not self._authorized(request):
            raise HttpError(401, _NOT_AUTHORIZED)
        env_vars = body.get("envVars") or {}
        if not isinstance(env_vars, dict):
            raise HttpError(400, "envVars must be a JSON object of strings")
        if body.get("timestamp"):
            _sync_clock(str(body["timestamp"]))
        self._state.update(
            access_token=token,
            env_vars={str(k): str(v) for k, v in env_vars.items()},
            default_user=body.get("defaultUser"),
            default_workdir=body.get("defaultWorkdir"),
        )
        return Reply(204, headers={"Cache-Control": "no-store"})

    def envs(self, request: Request) -> Reply:
        return json_reply(200, dict(self._state.snapshot().env_vars))

    def metrics(self, request: Request) -> Reply:
        return json_reply(200, self._metrics.sample())

    def _file_user(self, request: Request, operation: str) -> User:
        """The user of a ``/files`` request once its token or its signature let it in."""
        token = self._state.snapshot().access_token
        presented = request.headers.get("X-Access-Token")
        if token is not None:
            if presented:
                if not self._authorized(request):
                    raise HttpError(401, "X-Access-Token does not match the sandbox's access token")
            else:
                try:
                    signing.verify_signed_query(request.query, operation, token, time.time())
                except signing.SignatureRefused as exc:
                    raise HttpError(exc.status, str(exc)) from exc
        try:
            return self._state.resolve_user(request.query.get("username"))
        except RpcError as exc:
            raise HttpError(401, exc.message) from exc

    def download(self, request: Request) -> Reply:
        user = self._file_user(request, signing.READ)
        path = resolve_path(request.query.get("path", ""), user)
        if os.path.isdir(path):
            raise HttpError(400, f"path {path!r} is a directory: download files one at a time")
        if not os.path.exists(path):
            raise HttpError(404, f"path {path!r} does not exist")
        encoding = httpio.negotiate_encoding(request.headers.get("Accept-Encoding", ""))
        if encoding is None:
            raise HttpError(400, "Accept-Encoding refuses identity and gzip: accept one of them")
        name = os.path.basename(path).replace('"', "")
        return Reply(
            200,
            content_type="application/octet-stream",
            file_path=path,
            headers={"Content-Disposition": f'attachment; filename="{name}"', "Vary": "Accept-Encoding"},
            gzip=encoding == "gzip",
        )

    def upload(self, request: Request) -> Reply:
        user = self._file_user(request, signing.WRITE)
        metadata = upload_metadata(request.headers)
        try:
            filesystem.check_metadata(metadata)
        except RpcError as exc:
            raise HttpError(400, f"invalid metadata: {exc.message}") from exc
        content_type = request.headers.get("Content-Type", "")
        try:
            if content_type.lower().startswith("multipart/form-data"):
                body = httpio.read_body(request.rfile, request.headers)
                files = _multipart_files(body, content_type)
                target = request.query.get("path")
                written = [
                    self._write(user, target if target and len(files) == 1 else name, [data], metadata)
                    for name, data in files
                ]
            else:
                target = request.query.get("path")
                if not target:
                    raise HttpError(400, "an octet-stream upload needs the path query parameter")
                pieces: Iterable[bytes]
                encoding = request.headers.get("Content-Encoding", "")
                if encoding in ("", "identity"):
                    pieces = httpio.iter_body(request.rfile, request.headers)
                else:
                    pieces = [httpio.read_body(request.rfile, request.headers)]
                written = [self._write(user, target, pieces, metadata)]
        except httpio.BodyError as exc:
            raise HttpError(400, str(exc)) from exc
        return json_reply(200, written)

    def _write(self, user: User, path: str, pieces: Iterable[bytes], metadata: dict[str, str]) -> Message:
        resolved = resolve_path(path, user)
        written = filesystem.write_file(resolved, pieces, user.uid, user.gid)
        if not filesystem.write_metadata(resolved, metadata) and metadata:
            print(f"envd: {resolved}: the filesystem has no xattrs, metadata not kept", file=sys.stderr)
        stored = filesystem.read_metadata(resolved)
        if stored:
            written["metadata"] = stored
        return written


def upload_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    """The ``X-Metadata-<key>`` headers as {lowercased key: value}; empty keys are dropped."""
    prefix = METADATA_HEADER_PREFIX.lower()
    return {
        name[len(prefix) :].lower(): value
        for name, value in headers.items()
        if name.lower().startswith(prefix) and name[len(prefix) :]
    }


def _multipart_files(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """(filename, content) of every file part of a ``multipart/form-data`` body."""
    match = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', content_type)
    if match is None:
        raise HttpError(400, "multipart Content-Type has no boundary")
    delimiter = b"--" + (match.group(1) or match.group(2)).encode()
    start = body.find(delimiter)
    if start < 0:
        raise HttpError(400, "multipart body does not contain its boundary")
    files = []
    for segment in body[start + len(delimiter) :].split(b"\r\n" + delimiter):
        if segment.startswith(b"--"):
            break
        head, separator, content = segment.partition(b"\r\n\r\n")
        if not separator:
            raise HttpError(400, "multipart part has no header/body separator")
        disposition = re.search(rb'filename="((?:[^"\\]|\\.)*)"', head)
        if disposition is not None:
            files.append((disposition.group(1).decode("utf-8", "replace").replace('\\"', '"'), content))
    if not files:
        raise HttpError(400, "multipart body has no file part")
    return files


def _sync_clock(timestamp: str) -> None:
    """Set the guest clock to the host's when they differ by more than a second."""
    try:
        seconds, nanos = parse_rfc3339(timestamp)
    except CodecError as exc:
        raise HttpError(400, f"timestamp: {exc}") from exc
    host_time_s = seconds + nanos / 1e9
    if abs(host_time_s - time.time()) <= CLOCK_DRIFT_LIMIT_S:
        return
    try:
        time.clock_settime(time.CLOCK_REALTIME, host_time_s)
    except OSError as exc:
        print(f"envd: cannot set the clock to {timestamp}: {exc}", file=sys.stderr)

"""envd's plain HTTP endpoints (``spec/envd.yaml``): health, init, envs, metrics, files.

Errors are JSON ``{"code": <HTTP status>, "message": "..."}`` like the original's. Once
``/init`` has set an access token, every request but ``GET /health`` and ``POST /init``
must carry it in ``X-Access-Token``; ``/files`` checks it itself, as the original does,
because signed URLs are its other way in (signatures are not supported here, so a signed
request without the header is refused with a message saying so).

Uploads accept ``multipart/form-data`` (one part per file: the ``path`` query parameter
names a single file, otherwise each part's filename is its path) and
``application/octet-stream`` (optionally ``Content-Encoding: gzip``). Both answer with
the list ``[{"path", "name", "type": "file"}]``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from io import BufferedIOBase

from . import filesystem, httpio
from .codec import CodecError, Message, parse_rfc3339
from .connect import HTTP_STATUS, Code, RpcError
from .state import AgentState, User, resolve_path

CLOCK_DRIFT_LIMIT_S = 1.0
_NOT_AUTHORIZED = "unauthorized access: send the sandbox's access token in the X-Access-Token header"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = ""
    file_path: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


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
        return json_reply(200, _metrics())

    def _file_user(self, request: Request) -> User:
        if not self._authorized(request):
            if "signature" in request.query:
                raise HttpError(
                    401, "signed URLs are not supported by this envd: send X-Access-Token instead"
                )
            raise HttpError(401, _NOT_AUTHORIZED)
        try:
            return self._state.resolve_user(request.query.get("username"))
        except RpcError as exc:
            raise HttpError(401, exc.message) from exc

    def download(self, request: Request) -> Reply:
        user = self._file_user(request)
        path = resolve_path(request.query.get("path", ""), user)
        if os.path.isdir(path):
            raise HttpError(400, f"path {path!r} is a directory: download files one at a time")
        if not os.path.exists(path):
            raise HttpError(404, f"path {path!r} does not exist")
        name = os.path.basename(path).replace('"', "")
        return Reply(
            200,
            content_type="application/octet-stream",
            file_path=path,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    def upload(self, request: Request) -> Reply:
        user = self._file_user(request)
        content_type = request.headers.get("Content-Type", "")
        try:
            if content_type.lower().startswith("multipart/form-data"):
                body = httpio.read_body(request.rfile, request.headers)
                files = _multipart_files(body, content_type)
                target = request.query.get("path")
                written = [
                    self._write(user, target if target and len(files) == 1 else name, [data])
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
                written = [self._write(user, target, pieces)]
        except httpio.BodyError as exc:
            raise HttpError(400, str(exc)) from exc
        return json_reply(200, written)

    def _write(self, user: User, path: str, pieces: Iterable[bytes]) -> Message:
        return filesystem.write_file(resolve_path(path, user), pieces, user.uid, user.gid)


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


def _metrics() -> dict[str, object]:
    meminfo: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                meminfo[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    disk = shutil.disk_usage("/")
    cpu_count = os.cpu_count() or 1
    load_1m = os.getloadavg()[0]  # a cheap stand-in for sampled CPU time
    total = meminfo.get("MemTotal", 0)
    return {
        "ts": int(dt.datetime.now(dt.UTC).timestamp()),
        "cpu_count": cpu_count,
        "cpu_used_pct": round(min(100.0, 100.0 * load_1m / cpu_count), 2),
        "mem_total": total,
        "mem_used": total - meminfo.get("MemAvailable", total),
        "disk_used": disk.used,
        "disk_total": disk.total,
    }

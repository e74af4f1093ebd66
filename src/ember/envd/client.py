"""Host-side client of envd: its HTTP API and its Connect RPCs (protobuf codec).

Every call opens its own HTTP/1.1 connection, so a client object is safe to share
between threads and a long stream never blocks other calls. Streams (``Process/Start``,
``Process/Connect``) keep their connection until the process ends or the handle is
closed; closing a handle never stops the process (use ``kill``).

Failures raise ``EnvdError`` carrying the Connect code (``not_found``,
``unauthenticated``, ``deadline_exceeded`` ...) or ``unavailable`` when envd cannot be
reached, so callers branch on ``error.code`` rather than on message text.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import secrets
import signal
import socket
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

from ember.envd.agent.codec import Message
from ember.envd.agent.connect import ENVELOPE_HEADER, FLAG_END_STREAM, Encoding, RpcError, envelope
from ember.envd.records import EntryInfo, GuestMetrics, ProcessInfo, ProcessResult
from ember.errors import EmberError

DEFAULT_TIMEOUT_S = 30.0
CONNECT_RETRY_S = 0.005
CONNECT_ATTEMPT_S = 0.05
READY_REQUEST_TIMEOUT_S = 2.0
STREAM_KEEPALIVE_S = 5
_PROTO = Encoding.PROTO
OutputCallback = Callable[[bytes], None]
_Stream = Generator[Message, None, None]


class EnvdError(EmberError):
    """envd refused or failed a request, or could not be reached."""

    def __init__(self, operation: str, code: str, message: str) -> None:
        self.operation = operation
        self.code = code
        self.message = message
        super().__init__(f"envd {operation}: {code}: {message}{_HINTS.get(code, '')}")


_HINTS = {
    "unavailable": "; check the sandbox is running and envd listens on its port",
    "unauthenticated": "; pass the access token given to /init (EnvdClient(access_token=...))",
    "deadline_exceeded": "; raise timeout_s if the operation is expected to take longer",
}


class ProcessHandle:
    """A started (or re-attached) process: its output stream and what can be sent to it."""

    def __init__(self, client: EnvdClient, pid: int, events: _Stream, user: str) -> None:
        self.pid = pid
        self._client = client
        self._events = events
        self._user = user

    def wait(
        self, on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None
    ) -> ProcessResult:
        """Relay output to the callbacks as it arrives; return once the process has ended."""
        stdout, stderr = bytearray(), bytearray()
        for message in self._events:
            event = message.get("event", {})
            data = event.get("data")
            if data is not None:
                if "stdout" in data:
                    stdout += data["stdout"]
                    if on_stdout is not None:
                        on_stdout(data["stdout"])
                if "stderr" in data:
                    stderr += data["stderr"]
                    if on_stderr is not None:
                        on_stderr(data["stderr"])
            end = event.get("end")
            if end is not None:
                self.close()
                return ProcessResult(
                    self.pid, int(end.get("exit_code", 0)), bytes(stdout), bytes(stderr),
                    end.get("status", ""), end.get("error"),
                )  # fmt: skip
        raise EnvdError(
            "process stream", "data_loss", f"stream of process {self.pid} ended without an end event"
        )

    def send_stdin(self, data: bytes) -> None:
        self._client.unary(
            "process.Process/SendInput", self._selector({"input": {"stdin": data}}), self._user
        )

    def close_stdin(self) -> None:
        self._client.unary("process.Process/CloseStdin", self._selector({}), self._user)

    def send_signal(self, signum: int = signal.SIGTERM) -> None:
        self._client.unary("process.Process/SendSignal", self._selector({"signal": signum}), self._user)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Stop listening; the process keeps running."""
        self._events.close()

    def _selector(self, message: Message) -> Message:
        return {"process": {"pid": self.pid}, **message}


class EnvdClient:
    """Talks to one envd at ``base_url`` (``http://host:49983``)."""

    def __init__(
        self,
        base_url: str,
        access_token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        headers: Mapping[str, str] | None = None,
    ):
        """``headers`` go with every request: e.g. ``E2b-Sandbox-Id``/``E2b-Sandbox-Port`` to reach
        envd through a sandbox proxy rather than at the sandbox's own address."""
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise EnvdError("connect", "invalid_argument", f"base URL {base_url!r} is not http://host:port")
        self.base_url = base_url
        self._host = url.hostname
        self._port = url.port or 80
        self.access_token = access_token
        self.timeout_s = timeout_s
        self.extra_headers = dict(headers or {})

    def _headers(self, user: str | None = None) -> dict[str, str]:
        headers = dict(self.extra_headers)
        if self.access_token:
            headers["X-Access-Token"] = self.access_token
        if user:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:".encode()).decode()
        return headers

    def _open(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout_s: float,
        operation: str,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)
        try:
            connection.request(method, path, body=body, headers={**self.extra_headers, **headers})
            return connection, connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise EnvdError(operation, "unavailable", f"{self.base_url}{path}: {exc}") from exc

    def _exchange(
        self, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None, operation: str = "",
    ) -> tuple[int, bytes]:  # fmt: skip
        connection, response = self._open(
            method, path, body, headers or {}, timeout_s or self.timeout_s, operation or path
        )
        try:
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise EnvdError(operation or path, "unavailable", f"reading the reply failed: {exc}") from exc
        finally:
            response.close()
            connection.close()

    # ---- plain HTTP API -------------------------------------------------------------

    def health(self) -> bool:
        try:
            status, _ = self._exchange("GET", "/health", timeout_s=CONNECT_ATTEMPT_S * 20)
        except EnvdError:
            return False
        return status == 204

    def wait_until_healthy(self, timeout_s: float, check: Callable[[], None] = lambda: None) -> None:
        """Wait until envd accepts connections and answers ``/health``; ``EnvdError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        self._wait_for_listener(deadline, check, "health")
        while True:
            try:
                status, _ = self._exchange("GET", "/health", timeout_s=READY_REQUEST_TIMEOUT_S)
                if status == 204:
                    return
            except EnvdError:
                pass
            self._retry_or_give_up(deadline, check, "health")

    def init_when_ready(
        self,
        timeout_s: float,
        check: Callable[[], None] = lambda: None,
        *,
        access_token: str | None = None,
        env_vars: Mapping[str, str] | None = None,
        default_user: str | None = None,
        default_workdir: str | None = None,
    ) -> None:
        """Wait until envd accepts a connection, then ``POST /init`` until it succeeds; at most ``timeout_s``.

        This is the one readiness loop for a guest that is booting or waking up. Connecting
        is retried every 5 ms with 50 ms attempts (the original's): a SYN the guest was not
        yet running to answer would otherwise wait for TCP's 1 s retransmission. Once a
        connection is accepted, each request gets ``READY_REQUEST_TIMEOUT_S``: a guest on TCG
        needs ~150 ms to answer its first request, and shorter attempts would abandon it half
        done, again and again. ``check`` runs before every attempt and raises to give up early
        (the VM exited, its memory could not be read). An answer that is an HTTP error (a
        refused token) is final: retrying cannot change it.
        """
        deadline = time.monotonic() + timeout_s
        self._wait_for_listener(deadline, check, "init")
        while True:
            try:
                self.init(
                    access_token=access_token,
                    env_vars=env_vars,
                    default_user=default_user,
                    default_workdir=default_workdir,
                    timestamp=dt.datetime.now(dt.UTC),
                    timeout_s=READY_REQUEST_TIMEOUT_S,
                )
                return
            except EnvdError as exc:
                if exc.code != "unavailable":
                    raise
            self._retry_or_give_up(deadline, check, "init")

    def _wait_for_listener(self, deadline: float, check: Callable[[], None], operation: str) -> None:
        while True:
            check()
            try:
                socket.create_connection((self._host, self._port), timeout=CONNECT_ATTEMPT_S).close()
                return
            except OSError:
                self._retry_or_give_up(deadline, check, operation)

    def _retry_or_give_up(self, deadline: float, check: Callable[[], None], operation: str) -> None:
        check()
        if time.monotonic() >= deadline:
            raise EnvdError(operation, "deadline_exceeded", f"envd at {self.base_url} did not answer in time")
        time.sleep(CONNECT_RETRY_S)

    def init(
        self,
        access_token: str | None = None,
        env_vars: Mapping[str, str] | None = None,
        default_user: str | None = None,
        default_workdir: str | None = None,
        timestamp: dt.datetime | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """Configure envd (``POST /init``); the token is used for every later request.

        The request carries the client's current token, if any: envd lets a token be replaced
        only by whoever knows the current one, or holds the one its host channel vouches for.
        """
        moment = (timestamp or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        body: dict[str, Any] = {"timestamp": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        for key, value in (
            ("accessToken", access_token),
            ("envVars", dict(env_vars) if env_vars is not None else None),
            ("defaultUser", default_user),
            ("defaultWorkdir", default_workdir),
        ):
            if value is not None:
                body[key] = value
        headers = {"Content-Type": "application/json", **self._headers()}
        status, reply = self._exchange(
            "POST", "/init", json.dumps(body).encode(), headers, timeout_s=timeout_s, operation="init"
        )
        _check_http("init", status, reply, expected=204)
        if access_token is not None:
            self.access_token = access_token

    def envs(self) -> dict[str, str]:
        status, reply = self._exchange("GET", "/envs", headers=self._headers(), operation="envs")
        _check_http("envs", status, reply)
        result: dict[str, str] = json.loads(reply)
        return result

    def metrics(self) -> GuestMetrics:
        """The guest's CPU, memory and disk figures (``GET /metrics``, what ``get_metrics`` reports)."""
        status, reply = self._exchange("GET", "/metrics", headers=self._headers(), operation="metrics")
        _check_http("metrics", status, reply)
        try:
            return GuestMetrics.from_json(json.loads(reply))
        except (ValueError, TypeError, AttributeError) as exc:
            raise EnvdError(
                "metrics", "internal", f"envd sent metrics that are not a JSON object: {exc}"
            ) from exc

    def write_file(self, path: str, data: bytes, user: str = "root") -> None:
        """Upload ``data`` to ``path`` (multipart, parents created, replaced if present)."""
        boundary = secrets.token_hex(16)
        body = b"".join(
            (
                f"--{boundary}\r\n".encode(),
                b'Content-Disposition: form-data; name="file"; filename="upload"\r\n',
                b"Content-Type: application/octet-stream\r\n\r\n",
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            )
        )
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", **self._headers()}
        query = urlencode({"path": path, "username": user})
        status, reply = self._exchange("POST", f"/files?{query}", body, headers, operation="write file")
        _check_http("write file", status, reply)

    def read_file(self, path: str, user: str = "root") -> bytes:
        query = urlencode({"path": path, "username": user})
        status, reply = self._exchange(
            "GET", f"/files?{query}", headers=self._headers(), operation="read file"
        )
        _check_http("read file", status, reply)
        return reply

    # ---- Connect RPC ---------------------------------------------------------------

    def unary(self, method: str, request: Message, user: str | None = None) -> Message:
        """Call a unary RPC (``"process.Process/List"``) with the protobuf codec."""
        request_type, response_type = _message_types(method)
        headers = {
            "Content-Type": "application/proto",
            "Connect-Protocol-Version": "1",
            **self._headers(user),
        }
        status, reply = self._exchange("POST", f"/{method}", _PROTO.encode(request_type, request), headers,
                                       operation=method)  # fmt: skip
        if status != 200:
            raise _rpc_error(method, status, reply)
        return _decode(method, response_type, reply)

    def stream(self, method: str, request: Message, user: str | None, timeout_s: float) -> _Stream:
        """Call a server-streaming RPC; yields each response message until the stream ends."""
        request_type, response_type = _message_types(method)
        headers = {
            "Content-Type": "application/connect+proto",
            "Connect-Protocol-Version": "1",
            "Connect-Timeout-Ms": str(int(timeout_s * 1000)),
            "Keepalive-Ping-Interval": str(STREAM_KEEPALIVE_S),
            **self._headers(user),
        }
        body = envelope(_PROTO.encode(request_type, request))
        connection, response = self._open("POST", f"/{method}", body, headers, timeout_s + 10, method)
        return _read_stream(method, connection, response, response_type)

    def start(
        self, cmd: str, *, user: str = "root", cwd: str | None = None, envs: Mapping[str, str] | None = None,
        stdin: bool = False, tag: str | None = None, timeout_s: float | None = None,
    ) -> ProcessHandle:  # fmt: skip
        """Start ``/bin/bash -l -c cmd`` and return once envd reported its pid."""
        return self.start_program(
            "/bin/bash", ["-l", "-c", cmd], user=user, cwd=cwd, envs=envs, stdin=stdin, tag=tag,
            timeout_s=timeout_s,
        )  # fmt: skip

    def start_program(
        self, path: str, args: Sequence[str] = (), *, user: str = "root", cwd: str | None = None,
        envs: Mapping[str, str] | None = None, stdin: bool = False, tag: str | None = None,
        timeout_s: float | None = None,
    ) -> ProcessHandle:  # fmt: skip
        """Start ``path`` with ``args`` and no shell: a login shell costs ~100 ms on a TCG guest."""
        config: Message = {"cmd": path, "args": list(args), "envs": dict(envs or {})}
        if cwd is not None:
            config["cwd"] = cwd
        request: Message = {"process": config, "stdin": stdin}
        if tag is not None:
            request["tag"] = tag
        return self._attach("process.Process/Start", request, user, timeout_s or self.timeout_s)

    def connect(
        self, pid: int | None = None, tag: str | None = None, timeout_s: float | None = None
    ) -> ProcessHandle:
        """Re-attach to a running process by pid or tag (output from now on only)."""
        selector: Message = {"pid": pid} if pid is not None else {"tag": tag}
        return self._attach(
            "process.Process/Connect", {"process": selector}, None, timeout_s or self.timeout_s
        )

    def _attach(self, method: str, request: Message, user: str | None, timeout_s: float) -> ProcessHandle:
        messages = self.stream(method, request, user, timeout_s)
        first = next(messages, {}).get("event", {})
        if "start" not in first:
            messages.close()
            raise EnvdError(method, "data_loss", f"stream began with {first!r} instead of a start event")
        return ProcessHandle(self, int(first["start"].get("pid", 0)), messages, user or "root")

    def run(
        self, cmd: str, *, user: str = "root", cwd: str | None = None, envs: Mapping[str, str] | None = None,
        on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None,
        timeout_s: float = 60.0,
    ) -> ProcessResult:  # fmt: skip
        """Run ``cmd`` to completion; on timeout the process is killed and ``EnvdError`` raised."""
        handle = self.start(cmd, user=user, cwd=cwd, envs=envs, timeout_s=timeout_s)
        return _finish(handle, on_stdout, on_stderr)

    def run_program(self, path: str, args: Sequence[str] = (), *, timeout_s: float = 60.0) -> ProcessResult:
        """Run ``path`` as root without a shell, to completion (``run`` for a known binary)."""
        return _finish(self.start_program(path, args, timeout_s=timeout_s), None, None)

    def list_processes(self) -> list[ProcessInfo]:
        reply = self.unary("process.Process/List", {})
        return [ProcessInfo.from_message(item) for item in reply.get("processes", [])]

    def stat(self, path: str, user: str = "root") -> EntryInfo:
        return EntryInfo.from_message(self.unary("filesystem.Filesystem/Stat", {"path": path}, user)["entry"])

    def list_dir(self, path: str, depth: int = 1, user: str = "root") -> list[EntryInfo]:
        reply = self.unary("filesystem.Filesystem/ListDir", {"path": path, "depth": depth}, user)
        return [EntryInfo.from_message(item) for item in reply.get("entries", [])]

    def make_dir(self, path: str, user: str = "root") -> bool:
        """Create ``path`` with its parents; False when it already existed."""
        try:
            self.unary("filesystem.Filesystem/MakeDir", {"path": path}, user)
        except EnvdError as exc:
            if exc.code == "already_exists":
                return False
            raise
        return True

    def move(self, source: str, destination: str, user: str = "root") -> EntryInfo:
        request = {"source": source, "destination": destination}
        return EntryInfo.from_message(self.unary("filesystem.Filesystem/Move", request, user)["entry"])

    def remove(self, path: str, user: str = "root") -> None:
        self.unary("filesystem.Filesystem/Remove", {"path": path}, user)


def _message_types(method: str) -> tuple[str, str]:
    service, _, name = method.partition("/")
    package = service.split(".")[0]
    return f"{package}.{name}Request", f"{package}.{name}Response"


def _read_stream(
    method: str,
    connection: http.client.HTTPConnection,
    response: http.client.HTTPResponse,
    response_type: str,
) -> _Stream:
    try:
        if response.status != 200:
            raise _rpc_error(method, response.status, response.read())
        while True:
            header = response.read(ENVELOPE_HEADER.size)
            if len(header) < ENVELOPE_HEADER.size:
                raise EnvdError(method, "data_loss", "the stream ended without an end-of-stream message")
            flags, length = ENVELOPE_HEADER.unpack(header)
            payload = response.read(length)
            if len(payload) < length:
                raise EnvdError(method, "data_loss", "the stream ended inside a message")
            if flags & FLAG_END_STREAM:
                error = _end_of_stream_error(payload)
                if error:
                    raise EnvdError(method, error.get("code", "unknown"), error.get("message", ""))
                return
            yield _decode(method, response_type, payload)
    except (OSError, http.client.HTTPException) as exc:
        raise EnvdError(method, "unavailable", f"the stream broke: {exc}") from exc
    finally:
        response.close()
        connection.close()


def _decode(method: str, type_name: str, payload: bytes) -> Message:
    try:
        return _PROTO.decode(type_name, payload)
    except RpcError as exc:
        raise EnvdError(
            method, "internal", f"envd sent a reply that is not a {type_name}: {exc.message}"
        ) from exc


def _end_of_stream_error(payload: bytes) -> dict[str, str] | None:
    try:
        trailer = json.loads(payload or b"{}")
    except ValueError:
        return {"code": "internal", "message": f"end-of-stream message is not JSON: {payload[:100]!r}"}
    error = trailer.get("error") if isinstance(trailer, dict) else None
    return error if isinstance(error, dict) else None


_HTTP_CODES = {
    400: "invalid_argument",
    401: "unauthenticated",
    404: "not_found",
    409: "already_exists",
    415: "unimplemented",
    507: "resource_exhausted",
}


def _rpc_error(method: str, status: int, body: bytes) -> EnvdError:
    try:
        error = json.loads(body)
    except ValueError:
        error = {}
    code = error.get("code") if isinstance(error, dict) else None
    if not isinstance(code, str):
        code = _HTTP_CODES.get(status, "unknown")
    message = error.get("message", "") if isinstance(error, dict) else ""
    return EnvdError(method, code, message or f"HTTP {status}")


def _check_http(operation: str, status: int, body: bytes, expected: int = 200) -> None:
    if status == expected:
        return
    raise _rpc_error(operation, status, body)


def _finish(
    handle: ProcessHandle, on_stdout: OutputCallback | None, on_stderr: OutputCallback | None
) -> ProcessResult:
    """Wait for ``handle``'s exit; a timeout kills the process before ``EnvdError`` propagates."""
    try:
        return handle.wait(on_stdout, on_stderr)
    except EnvdError as exc:
        if exc.code == "deadline_exceeded":
            handle.kill()
        raise
    finally:
        handle.close()

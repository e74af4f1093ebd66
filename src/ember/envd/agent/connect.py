"""The Connect RPC protocol over HTTP/1.1: content types, envelopes, errors, deadlines.

Every call is ``POST /<package>.<Service>/<Method>``. Unary calls carry one bare message
(``application/json`` or ``application/proto``); a failure is an HTTP error status with a
JSON body ``{"code": "not_found", "message": "..."}``. Streaming calls
(``application/connect+json`` / ``application/connect+proto``) frame every message in an
envelope and always answer HTTP 200; the reply ends with an end-of-stream envelope whose
JSON body is ``{}`` or ``{"error": {"code": ..., "message": ...}}``::

    envelope = flags (1 byte) | length (u32 big-endian) | payload
    flags    0x01 payload compressed (Connect-Content-Encoding)   0x02 end of stream

``Connect-Timeout-Ms`` bounds the whole call: a stream still open at the deadline ends
with ``deadline_exceeded``.
"""

from __future__ import annotations

import enum
import json
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from io import BufferedIOBase
from typing import Any

from . import codec, httpio
from .codec import Message

ENVELOPE_HEADER = struct.Struct(">BI")
FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02
MAX_MESSAGE_BYTES = 64 << 20


class Code(enum.Enum):
    CANCELED = "canceled"
    UNKNOWN = "unknown"
    INVALID_ARGUMENT = "invalid_argument"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    ABORTED = "aborted"
    OUT_OF_RANGE = "out_of_range"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"
    DATA_LOSS = "data_loss"
    UNAUTHENTICATED = "unauthenticated"


HTTP_STATUS: dict[Code, int] = {
    Code.CANCELED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


class RpcError(Exception):
    """A call failed with a Connect error code; ``message`` is shown to the client."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}


class Shape(enum.Enum):
    UNARY = "unary"
    SERVER_STREAM = "server_stream"
    CLIENT_STREAM = "client_stream"


class Encoding(enum.Enum):
    JSON = "json"
    PROTO = "proto"

    def encode(self, type_name: str, message: Message) -> bytes:
        if self is Encoding.JSON:
            return json.dumps(codec.to_json(type_name, message), separators=(",", ":")).encode()
        return codec.encode(type_name, message)

    def decode(self, type_name: str, data: bytes) -> Message:
        try:
            if self is Encoding.PROTO:
                return codec.decode(type_name, data)
            return codec.from_json(type_name, json.loads(data or b"{}"))
        except (codec.CodecError, ValueError) as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"cannot decode {type_name}: {exc}") from exc


@dataclass(frozen=True)
class Call:
    """What a handler may know about the call beyond its request message."""

    headers: Mapping[str, str]
    username: str | None
    deadline: float | None

    def remaining_s(self) -> float | None:
        """Seconds left before the deadline (never negative), or None without one."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise RpcError(Code.DEADLINE_EXCEEDED, "the call outlived its Connect-Timeout-Ms")


UnaryHandler = Callable[[Call, Message], Message]
ServerStreamHandler = Callable[[Call, Message], Iterator[Message]]
ClientStreamHandler = Callable[[Call, Iterator[Message]], Message]


@dataclass(frozen=True)
class Method:
    request_type: str
    response_type: str
    shape: Shape
    handler: Callable[..., Any]


def parse_content_type(content_type: str, shape: Shape) -> Encoding:
    """The codec a request asks for; raises ``RpcError`` (HTTP 415) for a foreign type."""
    media = content_type.split(";", 1)[0].strip().lower()
    prefix = "application/" if shape is Shape.UNARY else "application/connect+"
    for encoding in Encoding:
        if media == prefix + encoding.value:
            return encoding
    raise RpcError(
        Code.UNIMPLEMENTED,
        f"content type {media!r} is not {prefix}json or {prefix}proto for a {shape.value} call",
    )


def parse_timeout(headers: Mapping[str, str]) -> float | None:
    """The absolute monotonic deadline from ``Connect-Timeout-Ms``, if sent."""
    raw = headers.get("Connect-Timeout-Ms")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 10:
        raise RpcError(Code.INVALID_ARGUMENT, f"Connect-Timeout-Ms {raw!r} is not 1-10 digits")
    return time.monotonic() + int(raw) / 1000.0


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return ENVELOPE_HEADER.pack(flags, len(payload)) + payload


def end_stream(error: RpcError | None) -> bytes:
    trailer = {} if error is None else {"error": error.to_json()}
    return envelope(json.dumps(trailer).encode(), FLAG_END_STREAM)


def iter_envelopes(rfile: BufferedIOBase, headers: Mapping[str, str]) -> Iterator[bytes]:
    """Yield each enveloped request payload as soon as it has fully arrived."""
    compression = headers.get("Connect-Content-Encoding", "")
    buffer = bytearray()
    for piece in httpio.iter_body(rfile, headers):
        buffer += piece
        while len(buffer) >= ENVELOPE_HEADER.size:
            flags, length = ENVELOPE_HEADER.unpack_from(buffer)
            if length > MAX_MESSAGE_BYTES:
                raise RpcError(
                    Code.RESOURCE_EXHAUSTED, f"message of {length} bytes exceeds {MAX_MESSAGE_BYTES}"
                )
            end = ENVELOPE_HEADER.size + length
            if len(buffer) < end:
                break
            payload = bytes(buffer[ENVELOPE_HEADER.size : end])
            del buffer[:end]
            if flags & FLAG_END_STREAM:
                return
            yield httpio.decompress(payload, compression) if flags & FLAG_COMPRESSED else payload
    if buffer:
        raise RpcError(
            Code.INVALID_ARGUMENT, f"request stream ends inside an envelope ({len(buffer)} bytes left)"
        )

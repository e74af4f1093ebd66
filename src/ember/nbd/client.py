"""Client side of the NBD handshake, blocking: connect to an ``nbd://`` / ``nbd+unix://`` URL
and negotiate an export with OPT_GO, leaving the socket in the transmission phase.

This is what ``nbd-client`` does before handing a socket to the kernel, and what the kernel
attach path does when given a URL instead of an in-process server. It only negotiates: moving
data is the kernel's job (or a test's).
"""

from __future__ import annotations

import socket
import struct
import urllib.parse
from dataclasses import dataclass

from ember.nbd.protocol import (
    CLIENT_FLAGS_SIZE,
    GREETING_SIZE,
    HandshakeFlag,
    InfoType,
    NbdError,
    Option,
    OptionReply,
    ProtocolViolation,
    TransmissionFlag,
    decode_greeting,
    decode_option_reply_header,
    encode_info_request,
    encode_option,
)

_OPTION_REPLY_HEADER_SIZE = 20
_MAX_REPLY_BYTES = 64 << 10


@dataclass(frozen=True)
class Endpoint:
    """Where an NBD URL points: a unix socket path or a TCP host and port, and the export name."""

    export_name: str
    unix_path: str | None = None
    host: str | None = None
    port: int = 10809


@dataclass(frozen=True)
class ExportInfo:
    """What OPT_GO told the client."""

    size_bytes: int
    flags: TransmissionFlag
    block_sizes: tuple[int, int, int] | None
    structured_replies: bool


def parse_url(url: str) -> Endpoint:
    """``nbd+unix:///name?socket=/path`` or ``nbd://host[:port]/name``; raises NbdError otherwise."""
    parts = urllib.parse.urlsplit(url)
    name = urllib.parse.unquote(parts.path.removeprefix("/"))
    if parts.scheme == "nbd+unix":
        path = urllib.parse.parse_qs(parts.query).get("socket")
        if not path:
            raise NbdError(f"{url!r} has no ?socket=: write nbd+unix:///name?socket=/path/to.sock")
        return Endpoint(name, unix_path=path[0])
    if parts.scheme == "nbd" and parts.hostname:
        return Endpoint(name, host=parts.hostname, port=parts.port or 10809)
    raise NbdError(f"{url!r} is not an NBD URL: write nbd://host:port/name or nbd+unix:///name?socket=PATH")


def connect(
    url: str, *, structured_replies: bool = False, timeout_s: float = 10.0
) -> tuple[socket.socket, ExportInfo]:
    """A socket in the transmission phase of the export ``url`` names, and what the server said.

    Raises NbdError when the server cannot be reached or refuses the export.
    """
    endpoint = parse_url(url)
    try:
        if endpoint.unix_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout_s)
            sock.connect(endpoint.unix_path)
        else:
            assert endpoint.host is not None
            sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout_s)
    except OSError as exc:
        raise NbdError(f"cannot connect to {url}: {exc}; is the NBD server running?") from exc
    try:
        info = negotiate(sock, endpoint.export_name, structured_replies=structured_replies)
    except (OSError, ProtocolViolation) as exc:
        sock.close()
        raise NbdError(f"NBD handshake with {url} failed: {exc}") from exc
    except NbdError:
        sock.close()
        raise
    sock.settimeout(None)
    return sock, info


def negotiate(sock: socket.socket, export_name: str, *, structured_replies: bool = False) -> ExportInfo:
    """Fixed newstyle handshake ending in OPT_GO; raises NbdError if the server refuses."""
    server_flags = decode_greeting(_recv_exactly(sock, GREETING_SIZE))
    if not server_flags & HandshakeFlag.FIXED_NEWSTYLE:
        raise NbdError("the server does not speak fixed newstyle NBD; use a newer server")
    client_flags = HandshakeFlag.FIXED_NEWSTYLE | (server_flags & HandshakeFlag.NO_ZEROES)
    sock.sendall(int(client_flags).to_bytes(CLIENT_FLAGS_SIZE, "big"))
    structured = False
    if structured_replies:
        sock.sendall(encode_option(Option.STRUCTURED_REPLY))
        structured = _read_option_reply(sock, Option.STRUCTURED_REPLY)[0] == OptionReply.ACK
    sock.sendall(encode_option(Option.GO, encode_info_request(export_name, (InfoType.BLOCK_SIZE,))))
    size_bytes, flags, block_sizes = -1, TransmissionFlag(0), None
    while True:
        reply_type, data = _read_option_reply(sock, Option.GO)
        if reply_type == OptionReply.ACK:
            break
        if reply_type != OptionReply.INFO:
            message = data.decode(errors="replace")
            raise NbdError(f"server refused export {export_name!r} (reply {reply_type:#x}): {message}")
        info_type = struct.unpack_from(">H", data)[0] if len(data) >= 2 else -1
        if info_type == InfoType.EXPORT and len(data) == 12:
            size_bytes, raw_flags = struct.unpack_from(">QH", data, 2)
            flags = TransmissionFlag(raw_flags)
        elif info_type == InfoType.BLOCK_SIZE and len(data) == 14:
            block_sizes = struct.unpack_from(">III", data, 2)
    if size_bytes < 0:
        raise ProtocolViolation("server acknowledged OPT_GO without sending the export size")
    return ExportInfo(size_bytes, flags, block_sizes, structured)


def _read_option_reply(sock: socket.socket, option: int) -> tuple[int, bytes]:
    replied_to, reply_type, length = decode_option_reply_header(
        _recv_exactly(sock, _OPTION_REPLY_HEADER_SIZE)
    )
    if replied_to != option or length > _MAX_REPLY_BYTES:
        raise ProtocolViolation(f"unexpected reply to option {replied_to} of {length} bytes")
    return reply_type, _recv_exactly(sock, length)


def _recv_exactly(sock: socket.socket, length: int) -> bytes:
    buffer = bytearray(length)
    view = memoryview(buffer)
    received = 0
    while received < length:
        count = sock.recv_into(view[received:])
        if count == 0:
            raise ProtocolViolation(f"server closed the connection after {received} of {length} bytes")
        received += count
    return bytes(buffer)

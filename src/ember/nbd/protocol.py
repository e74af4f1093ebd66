"""The NBD wire format (fixed newstyle handshake, transmission), pure bytes <-> records, no I/O.

Every integer is big-endian. Server greeting, then the client's flags::

    S: 0      8  NBDMAGIC  0x4e42444d41474943
    S: 8      8  IHAVEOPT  0x49484156454f5054
    S: 16     2  handshake flags (FIXED_NEWSTYLE | NO_ZEROES)
    C: 0      4  client flags (the same two bits; any other bit ends the session)

Option request (client) and option reply (server), repeated until GO or EXPORT_NAME::

    C: 0  8 IHAVEOPT | 8  4 option | 12 4 data length | 16 data...
    S: 0  8 0x0003e889045565a9 | 8  4 option | 12 4 reply type | 16 4 length | 20 data...

    OPT_INFO / OPT_GO data:  4 name length | name | 2 count | count x 2 info type
    REP_INFO data:           2 info type | body
        EXPORT (0)           8 size | 2 transmission flags
        NAME (1)             name (rest of the reply)
        DESCRIPTION (2)      text (rest of the reply)
        BLOCK_SIZE (3)       4 minimum | 4 preferred | 4 maximum
    REP_SERVER data:         4 name length | name

OPT_EXPORT_NAME is answered without an option reply header::

    S: 0 8 size | 8 2 transmission flags | 10 124 zero bytes (left out after NO_ZEROES)

Transmission phase::

    request          0 4 0x25609513 | 4 2 command flags | 6 2 type | 8 8 handle
                     16 8 offset | 24 4 length | 28 payload (WRITE only)
    simple reply     0 4 0x67446698 | 4 4 error | 8 8 handle | 16 data (READ only)
    structured chunk 0 4 0x668e33ef | 4 2 flags | 6 2 type | 8 8 handle | 16 4 length
                     20 payload:
        OFFSET_DATA (1)          8 offset | data
        ERROR (0x8001)           4 error | 2 message length | message

The error field carries the protocol's own errno values (``Errno``), not the host's.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ember.errors import EmberError

NBD_MAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPTION_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

GREETING_SIZE = 18
CLIENT_FLAGS_SIZE = 4
OPTION_HEADER_SIZE = 16
REQUEST_SIZE = 28
SIMPLE_REPLY_SIZE = 16
STRUCTURED_HEADER_SIZE = 20
EXPORT_NAME_PAD_SIZE = 124
MAX_STRING_BYTES = 4096

_GREETING = struct.Struct(">QQH")
_OPTION_HEADER = struct.Struct(">QII")
_OPTION_REPLY = struct.Struct(">QIII")
_REQUEST = struct.Struct(">IHHQQI")
_SIMPLE_REPLY = struct.Struct(">IIQ")
_STRUCTURED = struct.Struct(">IHHQI")
_EXPORT_INFO = struct.Struct(">HQH")
_BLOCK_SIZE_INFO = struct.Struct(">HIII")


class NbdError(EmberError):
    """An NBD export could not be served, reached or attached as a block device."""


class ProtocolViolation(NbdError):
    """A peer sent bytes the NBD protocol does not allow; the session cannot continue."""


class HandshakeFlag(enum.IntFlag):
    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class Option(enum.IntEnum):
    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 10
    SET_META_CONTEXT = 11


class OptionReply(enum.IntEnum):
    ACK = 1
    SERVER = 2
    INFO = 3
    ERR_UNSUP = (1 << 31) + 1
    ERR_POLICY = (1 << 31) + 2
    ERR_INVALID = (1 << 31) + 3
    ERR_PLATFORM = (1 << 31) + 4
    ERR_TLS_REQD = (1 << 31) + 5
    ERR_UNKNOWN = (1 << 31) + 6
    ERR_SHUTDOWN = (1 << 31) + 7
    ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
    ERR_TOO_BIG = (1 << 31) + 9


class InfoType(enum.IntEnum):
    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3


class TransmissionFlag(enum.IntFlag):
    HAS_FLAGS = 1 << 0
    READ_ONLY = 1 << 1
    SEND_FLUSH = 1 << 2
    SEND_FUA = 1 << 3
    ROTATIONAL = 1 << 4
    SEND_TRIM = 1 << 5
    SEND_WRITE_ZEROES = 1 << 6
    SEND_DF = 1 << 7
    CAN_MULTI_CONN = 1 << 8
    SEND_RESIZE = 1 << 9
    SEND_CACHE = 1 << 10
    SEND_FAST_ZERO = 1 << 11


class Command(enum.IntEnum):
    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7
    RESIZE = 8


class CommandFlag(enum.IntFlag):
    FUA = 1 << 0
    NO_HOLE = 1 << 1
    DF = 1 << 2
    REQ_ONE = 1 << 3
    FAST_ZERO = 1 << 4


class ReplyType(enum.IntEnum):
    NONE = 0
    OFFSET_DATA = 1
    OFFSET_HOLE = 2
    BLOCK_STATUS = 5
    ERROR = (1 << 15) + 1
    ERROR_OFFSET = (1 << 15) + 2


REPLY_FLAG_DONE = 1


class Errno(enum.IntEnum):
    """Error values of the protocol (fixed by the spec, whatever the host's errno numbering)."""

    OK = 0
    EPERM = 1
    EIO = 5
    ENOMEM = 12
    EINVAL = 22
    ENOSPC = 28
    EOVERFLOW = 75
    ENOTSUP = 95
    ESHUTDOWN = 108


@dataclass(frozen=True)
class Request:
    """One transmission request header; ``command`` stays an int so unknown types can be refused."""

    flags: int
    command: int
    handle: int
    offset: int
    length: int


@dataclass(frozen=True)
class InfoRequest:
    """The data of an OPT_INFO or OPT_GO: which export, and which info types the client asked for."""

    export_name: str
    info_types: tuple[int, ...]


@dataclass(frozen=True)
class SimpleReply:
    error: int
    handle: int


@dataclass(frozen=True)
class StructuredChunk:
    flags: int
    reply_type: int
    handle: int
    length: int


def encode_greeting(flags: HandshakeFlag) -> bytes:
    return _GREETING.pack(NBD_MAGIC, IHAVEOPT, flags)


def decode_greeting(data: bytes) -> HandshakeFlag:
    nbd_magic, opt_magic, flags = _GREETING.unpack(data)
    if nbd_magic != NBD_MAGIC or opt_magic != IHAVEOPT:
        raise ProtocolViolation("not an NBD newstyle server: the greeting magic is wrong")
    return HandshakeFlag(flags)


def encode_option(option: int, data: bytes = b"") -> bytes:
    return _OPTION_HEADER.pack(IHAVEOPT, option, len(data)) + data


def decode_option_header(data: bytes) -> tuple[int, int]:
    """``(option, data length)`` of a client option; a wrong magic means the client is not in sync."""
    magic, option, length = _OPTION_HEADER.unpack(data)
    if magic != IHAVEOPT:
        raise ProtocolViolation(f"option magic {magic:#x} is not IHAVEOPT")
    return option, length


def encode_option_reply(option: int, reply_type: int, data: bytes = b"") -> bytes:
    return _OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, reply_type, len(data)) + data


def decode_option_reply_header(data: bytes) -> tuple[int, int, int]:
    """``(option, reply type, data length)`` of a server option reply."""
    magic, option, reply_type, length = _OPTION_REPLY.unpack(data)
    if magic != OPTION_REPLY_MAGIC:
        raise ProtocolViolation(f"option reply magic {magic:#x} is wrong")
    return option, reply_type, length


def encode_info_request(export_name: str, info_types: tuple[int, ...] = ()) -> bytes:
    name = export_name.encode()
    return struct.pack(f">I{len(name)}sH{len(info_types)}H", len(name), name, len(info_types), *info_types)


def decode_info_request(data: bytes) -> InfoRequest:
    """Parse OPT_INFO / OPT_GO data; any length that does not add up is a ProtocolViolation."""
    if len(data) < 6:
        raise ProtocolViolation(f"info request of {len(data)} bytes is shorter than 6")
    (name_length,) = struct.unpack_from(">I", data, 0)
    if name_length > MAX_STRING_BYTES or 4 + name_length + 2 > len(data):
        raise ProtocolViolation(f"export name length {name_length} does not fit the option")
    (count,) = struct.unpack_from(">H", data, 4 + name_length)
    if 6 + name_length + 2 * count != len(data):
        raise ProtocolViolation(f"{count} info requests do not match the option length {len(data)}")
    try:
        name = data[4 : 4 + name_length].decode()
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("export name is not UTF-8") from exc
    types = struct.unpack_from(f">{count}H", data, 6 + name_length)
    return InfoRequest(name, types)


def encode_info_export(size_bytes: int, flags: TransmissionFlag) -> bytes:
    return _EXPORT_INFO.pack(InfoType.EXPORT, size_bytes, flags)


def encode_info_text(info_type: InfoType, text: str) -> bytes:
    return struct.pack(">H", info_type) + text.encode()


def encode_info_block_size(minimum: int, preferred: int, maximum: int) -> bytes:
    return _BLOCK_SIZE_INFO.pack(InfoType.BLOCK_SIZE, minimum, preferred, maximum)


def encode_server_entry(export_name: str) -> bytes:
    name = export_name.encode()
    return struct.pack(">I", len(name)) + name


def encode_export_name_reply(size_bytes: int, flags: TransmissionFlag, no_zeroes: bool) -> bytes:
    pad = b"" if no_zeroes else bytes(EXPORT_NAME_PAD_SIZE)
    return struct.pack(">QH", size_bytes, flags) + pad


def encode_request(command: int, handle: int, offset: int, length: int, flags: int = 0) -> bytes:
    return _REQUEST.pack(REQUEST_MAGIC, flags, command, handle, offset, length)


def decode_request(data: bytes | bytearray | memoryview) -> Request:
    """A request header; a wrong magic means the stream is out of sync and must be dropped."""
    magic, flags, command, handle, offset, length = _REQUEST.unpack(data)
    if magic != REQUEST_MAGIC:
        raise ProtocolViolation(f"request magic {magic:#x} is not {REQUEST_MAGIC:#x}")
    return Request(flags, command, handle, offset, length)


def encode_simple_reply(error: int, handle: int) -> bytes:
    return _SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, handle)


def decode_simple_reply(data: bytes) -> SimpleReply:
    magic, error, handle = _SIMPLE_REPLY.unpack(data)
    if magic != SIMPLE_REPLY_MAGIC:
        raise ProtocolViolation(f"simple reply magic {magic:#x} is wrong")
    return SimpleReply(error, handle)


def encode_data_chunk_header(handle: int, offset: int, data_length: int) -> bytes:
    """Header and offset of a final OFFSET_DATA chunk; the caller sends ``data_length`` bytes after it."""
    header = _STRUCTURED.pack(
        STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, ReplyType.OFFSET_DATA, handle, 8 + data_length
    )
    return header + struct.pack(">Q", offset)


def encode_error_chunk(handle: int, error: int, message: str) -> bytes:
    """A final ERROR chunk; the message is cut to what the 16-bit length field can carry."""
    text = message.encode()[:MAX_STRING_BYTES]
    payload = struct.pack(">IH", error, len(text)) + text
    return (
        _STRUCTURED.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, ReplyType.ERROR, handle, len(payload))
        + payload
    )


def decode_structured_header(data: bytes) -> StructuredChunk:
    magic, flags, reply_type, handle, length = _STRUCTURED.unpack(data)
    if magic != STRUCTURED_REPLY_MAGIC:
        raise ProtocolViolation(f"structured reply magic {magic:#x} is wrong")
    return StructuredChunk(flags, reply_type, handle, length)


def decode_error_payload(payload: bytes) -> tuple[int, str]:
    """``(error, message)`` of an ERROR or ERROR_OFFSET chunk payload."""
    error, message_length = struct.unpack_from(">IH", payload, 0)
    return error, payload[6 : 6 + message_length].decode(errors="replace")

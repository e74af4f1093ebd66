"""Server side of the fixed newstyle handshake: greeting, client flags, option haggling.

The server offers one export. Guarantees:

* a client that breaks a MUST of the protocol (wrong magic, unknown client flags, an
  option longer than ``MAX_OPTION_BYTES``, an unknown name in OPT_EXPORT_NAME) gets a
  ``ProtocolViolation`` and the caller drops the connection: there is no way to answer;
* every other mistake (malformed OPT_GO / OPT_INFO / OPT_LIST data, an unknown export name
  in OPT_GO, options we do not implement such as STARTTLS) gets an option error reply and
  the haggling goes on, as the spec asks;
* the whole handshake must finish within ``HANDSHAKE_TIMEOUT_S`` so an idle socket cannot
  hold a connection slot forever.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ember.nbd.protocol import (
    CLIENT_FLAGS_SIZE,
    OPTION_HEADER_SIZE,
    HandshakeFlag,
    InfoType,
    Option,
    OptionReply,
    ProtocolViolation,
    TransmissionFlag,
    decode_info_request,
    decode_option_header,
    encode_export_name_reply,
    encode_greeting,
    encode_info_block_size,
    encode_info_export,
    encode_info_text,
    encode_option_reply,
    encode_server_entry,
)

MIN_BLOCK_BYTES = 1
PREFERRED_BLOCK_BYTES = 4096
MAX_BLOCK_BYTES = 32 << 20
MAX_OPTION_BYTES = 16 << 10
HANDSHAKE_TIMEOUT_S = 30.0

_SERVER_FLAGS = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES


@dataclass(frozen=True)
class Export:
    """What the handshake tells a client about the one export."""

    name: str
    description: str
    size_bytes: int
    flags: TransmissionFlag


@dataclass(frozen=True)
class Negotiated:
    """Outcome of a handshake that reached the transmission phase."""

    structured_replies: bool


async def negotiate(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, export: Export
) -> Negotiated | None:
    """Run the handshake; ``None`` when the client ended it with OPT_ABORT.

    Raises ``ProtocolViolation`` (drop the connection), ``asyncio.IncompleteReadError`` (the
    client went away) or ``TimeoutError``.
    """
    async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
        return await _negotiate(reader, writer, export)


async def _negotiate(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, export: Export
) -> Negotiated | None:
    writer.write(encode_greeting(_SERVER_FLAGS))
    await writer.drain()
    client_flags = int.from_bytes(await reader.readexactly(CLIENT_FLAGS_SIZE), "big")
    if client_flags & ~int(_SERVER_FLAGS):
        raise ProtocolViolation(f"client flags {client_flags:#x} include bits the server did not offer")
    no_zeroes = bool(client_flags & HandshakeFlag.NO_ZEROES)
    structured = False
    while True:
        option, length = decode_option_header(await reader.readexactly(OPTION_HEADER_SIZE))
        if length > MAX_OPTION_BYTES:
            raise ProtocolViolation(f"option {option} carries {length} bytes, more than {MAX_OPTION_BYTES}")
        data = await reader.readexactly(length)
        if option == Option.EXPORT_NAME:
            if data.decode(errors="replace") != export.name:
                raise ProtocolViolation(f"OPT_EXPORT_NAME asked for an unknown export {data[:64]!r}")
            writer.write(encode_export_name_reply(export.size_bytes, export.flags, no_zeroes))
            await writer.drain()
            return Negotiated(structured)
        if option == Option.ABORT:
            writer.write(encode_option_reply(option, OptionReply.ACK))
            await writer.drain()
            return None
        reply = _answer(option, data, export, structured)
        writer.write(b"".join(reply))
        await writer.drain()
        accepted = _is_ack(reply[-1])
        if option == Option.STRUCTURED_REPLY and accepted:
            structured = True
        if option == Option.GO and accepted:
            return Negotiated(structured)


def _answer(option: int, data: bytes, export: Export, structured: bool) -> list[bytes]:
    """The option replies for one option other than EXPORT_NAME and ABORT; the last one is final."""
    if option == Option.LIST:
        if data:
            return [_error(option, OptionReply.ERR_INVALID, "OPT_LIST takes no data")]
        return [
            encode_option_reply(option, OptionReply.SERVER, encode_server_entry(export.name)),
            encode_option_reply(option, OptionReply.ACK),
        ]
    if option == Option.STRUCTURED_REPLY:
        if data:
            return [_error(option, OptionReply.ERR_INVALID, "OPT_STRUCTURED_REPLY takes no data")]
        if structured:
            return [_error(option, OptionReply.ERR_INVALID, "structured replies are already on")]
        return [encode_option_reply(option, OptionReply.ACK)]
    if option in (Option.INFO, Option.GO):
        return _answer_info(option, data, export)
    return [_error(option, OptionReply.ERR_UNSUP, f"option {option} is not supported by this server")]


def _answer_info(option: int, data: bytes, export: Export) -> list[bytes]:
    try:
        request = decode_info_request(data)
    except ProtocolViolation as exc:
        return [_error(option, OptionReply.ERR_INVALID, str(exc))]
    if request.export_name != export.name:
        return [_error(option, OptionReply.ERR_UNKNOWN, f"no export named {request.export_name!r}")]
    replies = [
        encode_option_reply(option, OptionReply.INFO, encode_info_export(export.size_bytes, export.flags)),
        encode_option_reply(
            option,
            OptionReply.INFO,
            encode_info_block_size(MIN_BLOCK_BYTES, PREFERRED_BLOCK_BYTES, MAX_BLOCK_BYTES),
        ),
    ]
    if InfoType.NAME in request.info_types:
        replies.append(
            encode_option_reply(option, OptionReply.INFO, encode_info_text(InfoType.NAME, export.name))
        )
    if InfoType.DESCRIPTION in request.info_types and export.description:
        text = encode_info_text(InfoType.DESCRIPTION, export.description)
        replies.append(encode_option_reply(option, OptionReply.INFO, text))
    replies.append(encode_option_reply(option, OptionReply.ACK))
    return replies


def _error(option: int, reply_type: OptionReply, message: str) -> bytes:
    return encode_option_reply(option, reply_type, message.encode())


def _is_ack(reply: bytes) -> bool:
    return int.from_bytes(reply[12:16], "big") == OptionReply.ACK

from __future__ import annotations

import struct

import pytest

from ember.nbd.protocol import (
    IHAVEOPT,
    NBD_MAGIC,
    OPTION_REPLY_MAGIC,
    REQUEST_MAGIC,
    Command,
    Errno,
    HandshakeFlag,
    InfoType,
    Option,
    OptionReply,
    ProtocolViolation,
    ReplyType,
    TransmissionFlag,
    decode_error_payload,
    decode_greeting,
    decode_info_request,
    decode_option_header,
    decode_option_reply_header,
    decode_request,
    decode_simple_reply,
    decode_structured_header,
    encode_data_chunk_header,
    encode_error_chunk,
    encode_export_name_reply,
    encode_greeting,
    encode_info_block_size,
    encode_info_export,
    encode_info_request,
    encode_option,
    encode_option_reply,
    encode_request,
    encode_server_entry,
    encode_simple_reply,
)


def test_greeting_is_the_two_magics_and_the_handshake_flags() -> None:
    greeting = encode_greeting(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES)
    assert greeting == struct.pack(">QQH", 0x4E42444D41474943, 0x49484156454F5054, 3)
    assert greeting[:8] == b"NBDMAGIC" and greeting[8:16] == b"IHAVEOPT"
    assert decode_greeting(greeting) == HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES


def test_a_greeting_with_a_wrong_magic_is_refused() -> None:
    with pytest.raises(ProtocolViolation, match="greeting magic"):
        decode_greeting(struct.pack(">QQH", NBD_MAGIC, 0x1234, 1))


def test_request_layout_is_28_big_endian_bytes() -> None:
    raw = encode_request(Command.WRITE, 0x1122334455667788, 4096, 512, flags=1)
    assert raw == bytes.fromhex("25609513000100011122334455667788000000000000100000000200")
    request = decode_request(raw)
    assert (request.command, request.handle, request.offset, request.length, request.flags) == (
        Command.WRITE,
        0x1122334455667788,
        4096,
        512,
        1,
    )


def test_a_request_with_a_wrong_magic_is_a_violation() -> None:
    raw = struct.pack(">IHHQQI", REQUEST_MAGIC + 1, 0, 0, 1, 0, 512)
    with pytest.raises(ProtocolViolation, match="request magic"):
        decode_request(raw)


def test_unknown_command_types_decode_so_the_server_can_refuse_them() -> None:
    assert decode_request(encode_request(99, 1, 0, 0)).command == 99


def test_simple_reply_round_trips() -> None:
    raw = encode_simple_reply(Errno.EINVAL, 7)
    assert raw == bytes.fromhex("67446698000000160000000000000007")
    reply = decode_simple_reply(raw)
    assert (reply.error, reply.handle) == (22, 7)


def test_read_data_chunk_is_final_and_counts_its_offset_field() -> None:
    raw = encode_data_chunk_header(handle=9, offset=8192, data_length=4096)
    chunk = decode_structured_header(raw[:20])
    assert (chunk.flags, chunk.reply_type, chunk.handle, chunk.length) == (1, ReplyType.OFFSET_DATA, 9, 4104)
    assert struct.unpack(">Q", raw[20:]) == (8192,)


def test_error_chunk_carries_the_errno_and_a_message() -> None:
    raw = encode_error_chunk(5, Errno.EIO, "disk on fire")
    chunk = decode_structured_header(raw[:20])
    assert (chunk.reply_type, chunk.flags, chunk.length) == (ReplyType.ERROR, 1, 6 + 12)
    assert decode_error_payload(raw[20:]) == (Errno.EIO, "disk on fire")


def test_option_request_and_reply_layouts() -> None:
    raw = encode_option(Option.GO, b"xyz")
    assert raw[:8] == struct.pack(">Q", IHAVEOPT)
    assert decode_option_header(raw[:16]) == (Option.GO, 3)
    reply = encode_option_reply(Option.LIST, OptionReply.ERR_UNSUP, b"no")
    assert reply[:8] == struct.pack(">Q", OPTION_REPLY_MAGIC)
    assert decode_option_reply_header(reply[:20]) == (Option.LIST, 0x80000001, 2)


def test_an_option_with_a_wrong_magic_is_a_violation() -> None:
    with pytest.raises(ProtocolViolation, match="IHAVEOPT"):
        decode_option_header(struct.pack(">QII", 0x25609513, 7, 0))


def test_info_request_round_trips_name_and_info_types() -> None:
    raw = encode_info_request("disk", (InfoType.NAME, InfoType.BLOCK_SIZE))
    assert raw == struct.pack(">I4sHHH", 4, b"disk", 2, 1, 3)
    request = decode_info_request(raw)
    assert request.export_name == "disk" and request.info_types == (1, 3)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        struct.pack(">I", 0),
        struct.pack(">I", 100) + b"ab" + struct.pack(">H", 0),
        struct.pack(">I", 0) + struct.pack(">H", 3) + struct.pack(">H", 1),
        struct.pack(">I", 0) + struct.pack(">H", 0) + b"trailing",
        struct.pack(">I", 2) + b"\xff\xfe" + struct.pack(">H", 0),
    ],
    ids=["empty", "no-count", "name-too-long", "count-too-big", "trailing-bytes", "not-utf8"],
)
def test_malformed_info_requests_are_violations(raw: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        decode_info_request(raw)


def test_info_replies_have_the_spec_layouts() -> None:
    flags = TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH
    assert encode_info_export(1 << 30, flags) == struct.pack(">HQH", 0, 1 << 30, 5)
    assert encode_info_block_size(1, 4096, 32 << 20) == struct.pack(">HIII", 3, 1, 4096, 32 << 20)
    assert encode_server_entry("a") == b"\x00\x00\x00\x01a"


def test_export_name_reply_pads_with_124_zero_bytes_unless_no_zeroes() -> None:
    flags = TransmissionFlag.HAS_FLAGS
    assert encode_export_name_reply(512, flags, no_zeroes=False) == struct.pack(">QH", 512, 1) + bytes(124)
    assert encode_export_name_reply(512, flags, no_zeroes=True) == struct.pack(">QH", 512, 1)


def test_protocol_constants_match_the_spec() -> None:
    assert [Errno.EPERM, Errno.EIO, Errno.EINVAL, Errno.ENOSPC, Errno.ENOTSUP, Errno.ESHUTDOWN] == [
        1,
        5,
        22,
        28,
        95,
        108,
    ]
    assert [
        Option.EXPORT_NAME,
        Option.ABORT,
        Option.LIST,
        Option.INFO,
        Option.GO,
        Option.STRUCTURED_REPLY,
    ] == [
        1,
        2,
        3,
        6,
        7,
        8,
    ]
    assert [Command.READ, Command.WRITE, Command.DISC, Command.FLUSH, Command.TRIM, Command.WRITE_ZEROES] == [
        0,
        1,
        2,
        3,
        4,
        6,
    ]
    assert TransmissionFlag.SEND_WRITE_ZEROES == 1 << 6 and TransmissionFlag.CAN_MULTI_CONN == 1 << 8
    assert OptionReply.ERR_UNKNOWN == (1 << 31) + 6

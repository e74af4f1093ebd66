from __future__ import annotations

import struct

from ember.nbd.netlink import (
    CTRL_ATTR_FAMILY_NAME,
    GENL_ID_CTRL,
    NBD_ATTR_BLOCK_SIZE_BYTES,
    NBD_ATTR_DEAD_CONN_TIMEOUT,
    NBD_ATTR_INDEX,
    NBD_ATTR_SERVER_FLAGS,
    NBD_ATTR_SIZE_BYTES,
    NBD_ATTR_SOCKETS,
    NBD_ATTR_TIMEOUT,
    NLA_F_NESTED,
    NLMSG_ERROR,
    attribute,
    connect_message,
    disconnect_message,
    get_family_message,
    parse_attributes,
    parse_messages,
)


def test_attributes_are_padded_to_four_bytes_but_report_their_real_length() -> None:
    assert attribute(2, b"nbd\0") == struct.pack("=HH", 8, 2) + b"nbd\0"
    assert attribute(1, b"abcde") == struct.pack("=HH", 9, 1) + b"abcde" + b"\0\0\0"


def test_family_lookup_is_a_ctrl_getfamily_request_for_nbd() -> None:
    raw = get_family_message(seq=5)
    length, msg_type, flags, seq, _ = struct.unpack_from("=IHHII", raw)
    assert (length, msg_type, flags, seq) == (len(raw), GENL_ID_CTRL, 0x5, 5)
    assert raw[16:20] == bytes([3, 1, 0, 0])
    assert parse_attributes(raw[20:]) == {CTRL_ATTR_FAMILY_NAME: b"nbd\0"}


def test_connect_carries_the_originals_settings_and_one_socket_item_per_fd() -> None:
    raw = connect_message(family_id=0x1A, seq=9, index=3, size_bytes=1 << 30, socket_fds=[7, 8])
    length, msg_type, _, seq, _ = struct.unpack_from("=IHHII", raw)
    assert (length, msg_type, seq) == (len(raw), 0x1A, 9)
    assert raw[16:18] == bytes([1, 1])
    attrs = parse_attributes(raw[20:])
    assert attrs[NBD_ATTR_INDEX] == struct.pack("=I", 3)
    assert attrs[NBD_ATTR_SIZE_BYTES] == struct.pack("=Q", 1 << 30)
    assert attrs[NBD_ATTR_BLOCK_SIZE_BYTES] == struct.pack("=Q", 4096)
    assert attrs[NBD_ATTR_TIMEOUT] == struct.pack("=Q", 90)
    assert attrs[NBD_ATTR_DEAD_CONN_TIMEOUT] == struct.pack("=Q", 30)
    assert attrs[NBD_ATTR_SERVER_FLAGS] == struct.pack("=Q", 1 | 1 << 8 | 1 << 5 | 1 << 6)
    items = attrs[NBD_ATTR_SOCKETS]
    assert struct.unpack_from("=HH", raw, raw.index(items) - 4)[1] == NBD_ATTR_SOCKETS | NLA_F_NESTED
    fds = [parse_attributes(item)[1] for item in _items(items)]
    assert fds == [struct.pack("=I", 7), struct.pack("=I", 8)]


def test_disconnect_names_only_the_device_index() -> None:
    raw = disconnect_message(family_id=0x1A, seq=2, index=11)
    assert raw[16] == 2
    assert parse_attributes(raw[20:]) == {NBD_ATTR_INDEX: struct.pack("=I", 11)}


def test_replies_split_into_messages_with_negated_errno() -> None:
    ack = struct.pack("=IHHII", 36, NLMSG_ERROR, 0, 4, 0) + struct.pack("=i", -2) + bytes(16)
    body = b"\x01\x01\x00\x00" + attribute(1, b"ab")
    data = struct.pack("=IHHII", 16 + len(body), 0x1A, 0, 4, 0) + body
    messages = parse_messages(data + ack)
    assert [(m[0], m[1], m[2]) for m in messages] == [(0x1A, 4, 0), (NLMSG_ERROR, 4, -2)]


def _items(nested: bytes) -> list[bytes]:
    items = []
    offset = 0
    while offset < len(nested):
        length = struct.unpack_from("=H", nested, offset)[0]
        items.append(nested[offset + 4 : offset + length])
        offset += (length + 3) & ~3
    return items

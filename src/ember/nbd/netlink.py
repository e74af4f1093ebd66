"""The kernel NBD driver's generic-netlink interface: connect and disconnect ``/dev/nbdN``.

Raw ``AF_NETLINK`` sockets, no third-party library. Netlink integers are host-endian
(little-endian on every host ember runs on); attributes are padded to 4 bytes::

    nlmsghdr     0 4 total length | 4 2 type (family id) | 6 2 flags | 8 4 seq | 12 4 port id
    genlmsghdr  16 1 command | 17 1 version | 18 2 reserved
    attributes  20 ...  each: 0 2 length (header + payload, unpadded) | 2 2 type | 4 payload | pad

NBD_CMD_CONNECT carries, as the original orchestrator sends them::

    INDEX (1) u32 | SIZE_BYTES (2) u64 | BLOCK_SIZE_BYTES (3) u64 | TIMEOUT (4) u64 seconds
    SERVER_FLAGS (5) u64 | DEAD_CONN_TIMEOUT (8) u64 seconds
    SOCKETS (7, nested) -> SOCK_ITEM (1, nested) -> SOCK_FD (1) u32, one item per connection

The family id of ``"nbd"`` is looked up with CTRL_CMD_GETFAMILY on GENL_ID_CTRL; it exists only
while the ``nbd`` module is loaded.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Sequence

from ember.nbd.protocol import NbdError, TransmissionFlag

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NLA_F_NESTED = 0x8000
NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

NBD_FAMILY_NAME = "nbd"
NBD_GENL_VERSION = 1
NBD_CMD_CONNECT = 1
NBD_CMD_DISCONNECT = 2
NBD_ATTR_INDEX = 1
NBD_ATTR_SIZE_BYTES = 2
NBD_ATTR_BLOCK_SIZE_BYTES = 3
NBD_ATTR_TIMEOUT = 4
NBD_ATTR_SERVER_FLAGS = 5
NBD_ATTR_SOCKETS = 7
NBD_ATTR_DEAD_CONN_TIMEOUT = 8
NBD_SOCK_ITEM = 1
NBD_SOCK_FD = 1

KERNEL_BLOCK_SIZE = 4096
KERNEL_TIMEOUT_S = 90
KERNEL_DEAD_CONN_TIMEOUT_S = 30
KERNEL_SERVER_FLAGS = (
    TransmissionFlag.HAS_FLAGS
    | TransmissionFlag.CAN_MULTI_CONN
    | TransmissionFlag.SEND_TRIM
    | TransmissionFlag.SEND_WRITE_ZEROES
)

_NLMSG = struct.Struct("=IHHII")
_GENL = struct.Struct("=BBH")
_NLA = struct.Struct("=HH")


def attribute(attr_type: int, payload: bytes) -> bytes:
    """One attribute, padded to a multiple of 4 bytes."""
    length = _NLA.size + len(payload)
    return _NLA.pack(length, attr_type) + payload + bytes(-length % 4)


def nested(attr_type: int, children: Sequence[bytes]) -> bytes:
    return attribute(attr_type | NLA_F_NESTED, b"".join(children))


def message(family_id: int, command: int, version: int, seq: int, attributes: Sequence[bytes]) -> bytes:
    """A generic netlink request asking for an ACK."""
    body = _GENL.pack(command, version, 0) + b"".join(attributes)
    return _NLMSG.pack(_NLMSG.size + len(body), family_id, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def get_family_message(seq: int, name: str = NBD_FAMILY_NAME) -> bytes:
    return message(
        GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, seq, [attribute(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")]
    )


def connect_message(
    family_id: int, seq: int, index: int, size_bytes: int, socket_fds: Sequence[int]
) -> bytes:
    """NBD_CMD_CONNECT with the original's settings: 4 KiB blocks, 90 s timeout, 30 s dead-conn timeout."""
    sockets = [nested(NBD_SOCK_ITEM, [attribute(NBD_SOCK_FD, struct.pack("=I", fd))]) for fd in socket_fds]
    attributes = [
        attribute(NBD_ATTR_INDEX, struct.pack("=I", index)),
        attribute(NBD_ATTR_SIZE_BYTES, struct.pack("=Q", size_bytes)),
        attribute(NBD_ATTR_BLOCK_SIZE_BYTES, struct.pack("=Q", KERNEL_BLOCK_SIZE)),
        attribute(NBD_ATTR_TIMEOUT, struct.pack("=Q", KERNEL_TIMEOUT_S)),
        attribute(NBD_ATTR_DEAD_CONN_TIMEOUT, struct.pack("=Q", KERNEL_DEAD_CONN_TIMEOUT_S)),
        attribute(NBD_ATTR_SERVER_FLAGS, struct.pack("=Q", KERNEL_SERVER_FLAGS)),
        nested(NBD_ATTR_SOCKETS, sockets),
    ]
    return message(family_id, NBD_CMD_CONNECT, NBD_GENL_VERSION, seq, attributes)


def disconnect_message(family_id: int, seq: int, index: int) -> bytes:
    return message(
        family_id,
        NBD_CMD_DISCONNECT,
        NBD_GENL_VERSION,
        seq,
        [attribute(NBD_ATTR_INDEX, struct.pack("=I", index))],
    )


def parse_attributes(data: bytes) -> dict[int, bytes]:
    """Top-level attributes of a buffer (type without the nested flag -> payload)."""
    found: dict[int, bytes] = {}
    offset = 0
    while offset + _NLA.size <= len(data):
        length, attr_type = _NLA.unpack_from(data, offset)
        if length < _NLA.size:
            break
        found[attr_type & ~NLA_F_NESTED] = data[offset + _NLA.size : offset + length]
        offset += (length + 3) & ~3
    return found


def parse_messages(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """``(type, seq, error, payload)`` per message; error is the negated errno of an NLMSG_ERROR."""
    messages = []
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, msg_type, _flags, seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            break
        payload = data[offset + _NLMSG.size : offset + length]
        error = struct.unpack_from("=i", payload, 0)[0] if msg_type == NLMSG_ERROR else 0
        messages.append((msg_type, seq, error, payload))
        offset += (length + 3) & ~3
    return messages


class NbdNetlink:
    """A generic netlink socket bound to the kernel's ``nbd`` family; raises NbdError on any failure."""

    def __init__(self) -> None:
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
            self._sock.bind((0, 0))
        except OSError as exc:
            raise NbdError(f"cannot open a generic netlink socket: {exc}") from exc
        self._seq = 0
        try:
            reply = self._exchange(get_family_message(self._next_seq()), "resolve the nbd netlink family")
            family = parse_attributes(reply[_GENL.size :]).get(CTRL_ATTR_FAMILY_ID)
            if family is None:
                raise NbdError("the kernel's family reply has no id; load the nbd module (modprobe nbd)")
            self._family_id: int = struct.unpack("=H", family[:2])[0]
        except BaseException:
            self._sock.close()
            raise

    def connect(self, index: int, size_bytes: int, socket_fds: Sequence[int]) -> None:
        request = connect_message(self._family_id, self._next_seq(), index, size_bytes, socket_fds)
        self._exchange(request, f"connect /dev/nbd{index}")

    def disconnect(self, index: int) -> None:
        self._exchange(
            disconnect_message(self._family_id, self._next_seq(), index), f"disconnect /dev/nbd{index}"
        )

    def close(self) -> None:
        self._sock.close()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _exchange(self, request: bytes, action: str) -> bytes:
        """Send ``request``; the payload of its reply (empty for a bare ACK), once the ACK arrives."""
        seq = self._seq
        reply = b""
        try:
            self._sock.send(request)
            while True:
                for msg_type, msg_seq, error, payload in parse_messages(self._sock.recv(65536)):
                    if msg_seq != seq:
                        continue
                    if msg_type != NLMSG_ERROR:
                        reply = payload
                    elif error:
                        raise NbdError(
                            f"cannot {action}: {os.strerror(-error)}; is the nbd module loaded, are we root?"
                        )
                    else:
                        return reply
        except OSError as exc:
            raise NbdError(f"cannot {action}: {exc}") from exc

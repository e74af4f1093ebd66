"""An in-memory Disk and a raw-socket NBD peer for the server tests."""

from __future__ import annotations

import socket
import struct
import threading

from ember.nbd.protocol import (
    SIMPLE_REPLY_SIZE,
    STRUCTURED_HEADER_SIZE,
    decode_simple_reply,
    decode_structured_header,
    encode_request,
)

BLOCK = 4096


class MemoryDisk:
    """A bytearray as a Disk; ``fail_reads`` makes read_at raise OSError(EIO)."""

    def __init__(self, size_bytes: int) -> None:
        self.data = bytearray(size_bytes)
        self.size = size_bytes
        self.block_size = BLOCK
        self.flushes = 0
        self.fail_reads = False
        self._lock = threading.Lock()

    def read_at(self, offset: int, length: int) -> bytes:
        if self.fail_reads:
            raise OSError(5, "injected read failure")
        return bytes(self.data[offset : offset + length])

    def write_at(self, data: bytes, offset: int) -> None:
        with self._lock:
            self.data[offset : offset + len(data)] = data

    def write_zeroes_at(self, offset: int, length: int) -> None:
        with self._lock:
            self.data[offset : offset + length] = bytes(length)

    def flush(self) -> None:
        self.flushes += 1


def recv_exactly(sock: socket.socket, length: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < length:
        chunk = sock.recv(length - len(chunks))
        if not chunk:
            raise ConnectionError(f"closed after {len(chunks)} of {length} bytes")
        chunks += chunk
    return bytes(chunks)


def is_closed(sock: socket.socket, timeout_s: float = 5.0) -> bool:
    """True when the server closed the connection (EOF or reset) within the timeout."""
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def simple_request(
    sock: socket.socket,
    command: int,
    handle: int,
    offset: int,
    length: int,
    *,
    flags: int = 0,
    payload: bytes = b"",
    reply_data: int = 0,
) -> tuple[int, bytes]:
    """Send one request; ``(error, data)`` of its simple reply (``reply_data`` bytes on success)."""
    sock.sendall(encode_request(command, handle, offset, length, flags) + payload)
    reply = decode_simple_reply(recv_exactly(sock, SIMPLE_REPLY_SIZE))
    assert reply.handle == handle
    data = recv_exactly(sock, reply_data) if reply.error == 0 and reply_data else b""
    return reply.error, data


def structured_reply(sock: socket.socket) -> tuple[int, int, int, bytes]:
    """``(handle, reply type, flags, payload)`` of one structured chunk."""
    chunk = decode_structured_header(recv_exactly(sock, STRUCTURED_HEADER_SIZE))
    return chunk.handle, chunk.reply_type, chunk.flags, recv_exactly(sock, chunk.length)


def offset_of(payload: bytes) -> int:
    return int(struct.unpack_from(">Q", payload)[0])

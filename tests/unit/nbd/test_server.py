"""The server against well-behaved and hostile peers speaking raw bytes over real sockets."""

from __future__ import annotations

import socket
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbd_fakes import BLOCK, MemoryDisk, is_closed, offset_of, recv_exactly, simple_request, structured_reply

from ember.errors import UsageError
from ember.nbd import NbdServerThread, ServerState
from ember.nbd.client import connect, negotiate
from ember.nbd.protocol import (
    GREETING_SIZE,
    Command,
    CommandFlag,
    Errno,
    HandshakeFlag,
    Option,
    OptionReply,
    ReplyType,
    TransmissionFlag,
    decode_error_payload,
    decode_option_reply_header,
    encode_info_request,
    encode_option,
    encode_request,
)

DISK_BYTES = 4 << 20
MAX_BYTES = 32 << 20


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="nbd-", dir="/tmp") as tmp:
        yield Path(tmp)


@pytest.fixture
def disk() -> MemoryDisk:
    disk = MemoryDisk(DISK_BYTES)
    disk.data[:] = bytes(range(256)) * (DISK_BYTES // 256)
    return disk


@pytest.fixture(params=[8, 0], ids=["disk-threads", "disk-work-on-the-loop"])
def server(disk: MemoryDisk, socket_dir: Path, request: pytest.FixtureRequest) -> Iterator[NbdServerThread]:
    """Every behaviour holds with a pool of disk threads and with none (a sandbox's local rootfs)."""
    with NbdServerThread(
        disk, socket_dir / "s.sock", ("127.0.0.1", 0), disk_threads=request.param
    ) as running:
        yield running
        assert running.unhandled_errors == ()


def transmission(server: NbdServerThread, structured: bool = False) -> socket.socket:
    sock, _ = connect(server.url, structured_replies=structured)
    sock.settimeout(10)
    return sock


def haggling(server: NbdServerThread) -> socket.socket:
    """A connection past the greeting and client flags, ready for options."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(server.url.split("socket=")[1]))
    recv_exactly(sock, GREETING_SIZE)
    sock.sendall(struct.pack(">I", HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES))
    return sock


def option_reply(sock: socket.socket) -> tuple[int, int, bytes]:
    option, reply_type, length = decode_option_reply_header(recv_exactly(sock, 20))
    return option, reply_type, recv_exactly(sock, length)


def still_serves(server: NbdServerThread, disk: MemoryDisk) -> bool:
    with transmission(server) as sock:
        error, data = simple_request(sock, Command.READ, 1, 4096, 512, reply_data=512)
    return error == 0 and data == bytes(disk.data[4096:4608])


def test_reads_and_writes_round_trip_with_simple_replies(server: NbdServerThread, disk: MemoryDisk) -> None:
    with transmission(server) as sock:
        assert simple_request(sock, Command.WRITE, 1, 8192, 5, payload=b"hello") == (0, b"")
        assert simple_request(sock, Command.READ, 2, 8190, 9, reply_data=9) == (
            0,
            bytes(disk.data[8190:8199]),
        )
    assert disk.data[8192:8197] == b"hello"


def test_structured_reads_arrive_as_one_final_data_chunk(server: NbdServerThread, disk: MemoryDisk) -> None:
    with transmission(server, structured=True) as sock:
        sock.sendall(encode_request(Command.READ, 3, 100, 300))
        handle, reply_type, flags, payload = structured_reply(sock)
    assert (handle, reply_type, flags) == (3, ReplyType.OFFSET_DATA, 1)
    assert offset_of(payload) == 100 and payload[8:] == bytes(disk.data[100:400])


def test_pipelined_requests_are_all_answered(server: NbdServerThread, disk: MemoryDisk) -> None:
    with transmission(server) as sock:
        sock.sendall(
            b"".join(encode_request(Command.READ, handle, handle * BLOCK, BLOCK) for handle in range(200))
        )
        seen = {}
        for _ in range(200):
            header = recv_exactly(sock, 16)
            handle = struct.unpack(">Q", header[8:])[0]
            seen[handle] = recv_exactly(sock, BLOCK)
    assert sorted(seen) == list(range(200))
    assert all(seen[h] == bytes(disk.data[h * BLOCK : (h + 1) * BLOCK]) for h in seen)


def test_trim_and_write_zeroes_zero_the_range_and_flush_reaches_the_disk(
    server: NbdServerThread, disk: MemoryDisk
) -> None:
    with transmission(server) as sock:
        assert simple_request(sock, Command.TRIM, 1, 0, 4096)[0] == 0
        assert simple_request(sock, Command.WRITE_ZEROES, 2, 8192, 100, flags=CommandFlag.NO_HOLE)[0] == 0
        assert simple_request(sock, Command.FLUSH, 3, 0, 0)[0] == 0
    assert disk.data[:4096] == bytes(4096) and disk.data[8192:8292] == bytes(100)
    assert disk.data[4096:8192] != bytes(4096)
    assert disk.flushes == 1


@pytest.mark.parametrize(
    ("command", "offset", "length", "flags", "error"),
    [
        (99, 0, 512, 0, Errno.EINVAL),
        (Command.CACHE, 0, 512, 0, Errno.EINVAL),
        (Command.BLOCK_STATUS, 0, 512, 0, Errno.EINVAL),
        (Command.READ, 0, 512, CommandFlag.FUA, Errno.EINVAL),
        (Command.READ, 0, MAX_BYTES + 1, 0, Errno.EINVAL),
        (Command.READ, DISK_BYTES - 10, 11, 0, Errno.EINVAL),
        (Command.READ, 1 << 62, 512, 0, Errno.EINVAL),
        (Command.READ, 0, 0, 0, Errno.EINVAL),
        (Command.FLUSH, 4096, 0, 0, Errno.EINVAL),
        (Command.TRIM, DISK_BYTES, 4096, 0, Errno.ENOSPC),
        (Command.WRITE_ZEROES, DISK_BYTES - 1, 2, 0, Errno.ENOSPC),
    ],
    ids=[
        "unknown-type",
        "cache",
        "block-status",
        "unnegotiated-flag",
        "read-over-32MiB",
        "read-past-end",
        "huge-offset",
        "zero-length",
        "flush-with-offset",
        "trim-past-end",
        "zeroes-past-end",
    ],
)
def test_bad_requests_get_an_error_and_the_connection_stays_usable(
    server: NbdServerThread,
    disk: MemoryDisk,
    command: int,
    offset: int,
    length: int,
    flags: int,
    error: Errno,
) -> None:
    with transmission(server) as sock:
        assert simple_request(sock, command, 7, offset, length, flags=flags) == (error, b"")
        assert simple_request(sock, Command.READ, 8, 0, 16, reply_data=16) == (0, bytes(disk.data[:16]))


def test_a_write_past_the_end_is_enospc_and_its_payload_is_consumed(
    server: NbdServerThread, disk: MemoryDisk
) -> None:
    with transmission(server) as sock:
        assert simple_request(sock, Command.WRITE, 1, DISK_BYTES - 2, 4, payload=b"abcd") == (
            Errno.ENOSPC,
            b"",
        )
        assert simple_request(sock, Command.READ, 2, 0, 16, reply_data=16) == (0, bytes(disk.data[:16]))


def test_an_oversized_write_is_discarded_with_einval(server: NbdServerThread, disk: MemoryDisk) -> None:
    before = bytes(disk.data)
    with transmission(server) as sock:
        assert simple_request(sock, Command.WRITE, 1, 0, MAX_BYTES + 1, payload=bytes(MAX_BYTES + 1)) == (
            Errno.EINVAL,
            b"",
        )
        assert simple_request(sock, Command.READ, 2, 0, 16, reply_data=16) == (0, before[:16])
    assert disk.data == before


def test_errors_under_structured_replies_are_error_chunks(server: NbdServerThread) -> None:
    with transmission(server, structured=True) as sock:
        sock.sendall(encode_request(Command.READ, 4, DISK_BYTES, 512))
        handle, reply_type, flags, payload = structured_reply(sock)
    assert (handle, reply_type, flags) == (4, ReplyType.ERROR, 1)
    assert decode_error_payload(payload)[0] == Errno.EINVAL


def test_a_failing_disk_gives_eio_and_the_server_carries_on(
    server: NbdServerThread, disk: MemoryDisk
) -> None:
    disk.fail_reads = True
    with transmission(server) as sock:
        assert simple_request(sock, Command.READ, 1, 0, 512) == (Errno.EIO, b"")
        disk.fail_reads = False
        assert simple_request(sock, Command.READ, 2, 0, 4, reply_data=4) == (0, bytes(disk.data[:4]))


def test_a_read_only_export_refuses_writes_with_eperm(disk: MemoryDisk, socket_dir: Path) -> None:
    before = bytes(disk.data)
    with NbdServerThread(disk, socket_dir / "ro.sock", read_only=True) as server:
        sock, info = connect(server.url)
        with sock:
            assert info.flags & TransmissionFlag.READ_ONLY
            assert simple_request(sock, Command.WRITE, 1, 0, 4, payload=b"evil") == (Errno.EPERM, b"")
            assert simple_request(sock, Command.TRIM, 2, 0, 4096) == (Errno.EPERM, b"")
            assert simple_request(sock, Command.WRITE_ZEROES, 3, 0, 4096) == (Errno.EPERM, b"")
            assert simple_request(sock, Command.READ, 4, 0, 4, reply_data=4) == (0, before[:4])
        assert server.unhandled_errors == ()
    assert disk.data == before


def test_disc_answers_outstanding_requests_before_closing(server: NbdServerThread, disk: MemoryDisk) -> None:
    with transmission(server) as sock:
        requests = b"".join(encode_request(Command.READ, h, h * BLOCK, BLOCK) for h in range(32))
        sock.sendall(requests + encode_request(Command.DISC, 99, 0, 0))
        handles = set()
        for _ in range(32):
            handles.add(struct.unpack(">Q", recv_exactly(sock, 16)[8:])[0])
            recv_exactly(sock, BLOCK)
        assert handles == set(range(32))
        assert is_closed(sock)


def test_a_bad_request_magic_drops_only_that_connection(server: NbdServerThread, disk: MemoryDisk) -> None:
    with transmission(server) as bystander, transmission(server) as sock:
        sock.sendall(b"\xde\xad\xbe\xef" + bytes(24))
        assert is_closed(sock)
        assert simple_request(bystander, Command.READ, 1, 0, 8, reply_data=8) == (0, bytes(disk.data[:8]))
    assert still_serves(server, disk)


@pytest.mark.parametrize(
    "partial",
    [encode_request(Command.READ, 1, 0, 512)[:10], encode_request(Command.WRITE, 1, 0, 4096) + b"x" * 100],
    ids=["truncated-header", "truncated-write-payload"],
)
def test_a_client_vanishing_mid_request_does_not_harm_the_server(
    server: NbdServerThread, disk: MemoryDisk, partial: bytes
) -> None:
    before = bytes(disk.data)
    sock = transmission(server)
    sock.sendall(partial)
    sock.close()
    assert still_serves(server, disk)
    assert disk.data == before


def test_a_client_vanishing_with_replies_pending_does_not_harm_the_server(
    server: NbdServerThread, disk: MemoryDisk
) -> None:
    sock = transmission(server)
    sock.sendall(b"".join(encode_request(Command.READ, h, 0, 1 << 20) for h in range(64)))
    sock.close()
    assert still_serves(server, disk)


def test_bad_client_flags_end_the_handshake(server: NbdServerThread, disk: MemoryDisk) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(server.url.split("socket=")[1])
        recv_exactly(sock, GREETING_SIZE)
        sock.sendall(struct.pack(">I", 0x80))
        assert is_closed(sock)
    assert still_serves(server, disk)


@pytest.mark.parametrize(
    "data",
    [
        encode_request(Command.READ, 1, 0, 512),
        struct.pack(">QII", 0x49484156454F5054, Option.INFO, 1 << 30),
        encode_option(Option.EXPORT_NAME, b"no-such-export"),
    ],
    ids=["request-before-handshake-ends", "option-too-long", "export-name-unknown"],
)
def test_handshake_violations_drop_the_connection(
    server: NbdServerThread, disk: MemoryDisk, data: bytes
) -> None:
    with haggling(server) as sock:
        sock.sendall(data)
        assert is_closed(sock)
    assert still_serves(server, disk)


@pytest.mark.parametrize(
    ("option", "data", "expected"),
    [
        (Option.GO, encode_info_request("other"), OptionReply.ERR_UNKNOWN),
        (Option.INFO, b"\x00\x00", OptionReply.ERR_INVALID),
        (Option.LIST, b"junk", OptionReply.ERR_INVALID),
        (Option.STARTTLS, b"", OptionReply.ERR_UNSUP),
        (Option.SET_META_CONTEXT, b"\x00" * 8, OptionReply.ERR_UNSUP),
        (77, b"", OptionReply.ERR_UNSUP),
    ],
    ids=[
        "go-unknown-export",
        "info-malformed",
        "list-with-data",
        "starttls",
        "meta-context",
        "unknown-option",
    ],
)
def test_refused_options_get_an_error_reply_and_haggling_continues(
    server: NbdServerThread, option: int, data: bytes, expected: OptionReply
) -> None:
    with haggling(server) as sock:
        sock.sendall(encode_option(option, data))
        assert option_reply(sock)[:2] == (option, expected)
        sock.sendall(encode_option(Option.GO, encode_info_request("")))
        replies = [option_reply(sock)[1] for _ in range(3)]
        assert replies == [OptionReply.INFO, OptionReply.INFO, OptionReply.ACK]
        assert simple_request(sock, Command.READ, 1, 0, 4, reply_data=4)[0] == 0


def test_list_names_the_export_and_abort_is_acknowledged(server: NbdServerThread) -> None:
    with haggling(server) as sock:
        sock.sendall(encode_option(Option.LIST))
        assert option_reply(sock) == (Option.LIST, OptionReply.SERVER, b"\x00\x00\x00\x00")
        assert option_reply(sock)[1] == OptionReply.ACK
        sock.sendall(encode_option(Option.ABORT))
        assert option_reply(sock)[:2] == (Option.ABORT, OptionReply.ACK)
        assert is_closed(sock)


def test_go_reports_size_flags_and_block_sizes(server: NbdServerThread) -> None:
    sock, info = connect(server.tcp_url)
    sock.close()
    assert info.size_bytes == DISK_BYTES
    assert info.block_sizes == (1, 4096, 32 << 20)
    expected = (
        TransmissionFlag.HAS_FLAGS
        | TransmissionFlag.SEND_FLUSH
        | TransmissionFlag.SEND_TRIM
        | TransmissionFlag.SEND_WRITE_ZEROES
        | TransmissionFlag.CAN_MULTI_CONN
    )
    assert info.flags == expected


def test_stop_closes_every_client_connection(disk: MemoryDisk, socket_dir: Path) -> None:
    server = NbdServerThread(disk, socket_dir / "stop.sock").start()
    sock = transmission(server)
    server.stop()
    assert is_closed(sock)
    sock.close()
    assert server.state is ServerState.STOPPED
    assert not (socket_dir / "stop.sock").exists()
    server.stop()


def test_an_adopted_socket_starts_in_the_transmission_phase(
    server: NbdServerThread, disk: MemoryDisk
) -> None:
    mine, theirs = socket.socketpair()
    server.adopt(theirs)
    with mine:
        mine.settimeout(10)
        assert simple_request(mine, Command.READ, 1, 0, 8, reply_data=8) == (0, bytes(disk.data[:8]))


def test_misuse_of_the_thread_facade_names_the_state(disk: MemoryDisk, socket_dir: Path) -> None:
    server = NbdServerThread(disk, socket_dir / "m.sock")
    with pytest.raises(UsageError, match="cannot read url: the NBD server is new, not running"):
        _ = server.url
    with server:
        with pytest.raises(UsageError, match="cannot start: the NBD server is running"):
            server.start()
        with pytest.raises(UsageError, match="does not listen on TCP"):
            _ = server.tcp_url
    with pytest.raises(UsageError, match="needs a unix_path, a tcp address, or both"):
        NbdServerThread(disk)


def test_a_taken_port_is_a_clear_error(disk: MemoryDisk) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = NbdServerThread(disk, tcp=("127.0.0.1", port))
        with pytest.raises(Exception, match="cannot listen on"):
            server.start()
        assert server.state is ServerState.STOPPED


def test_the_client_handshake_refuses_an_unknown_export(server: NbdServerThread) -> None:
    sock = socket.create_connection(server.tcp_address or ("", 0))
    with sock, pytest.raises(Exception, match="refused export 'nope'"):
        negotiate(sock, "nope")


class CachedMemoryDisk(MemoryDisk):
    """Holds its first MiB 'locally': those reads are offered inline, the rest go to read_at."""

    def __init__(self, size_bytes: int) -> None:
        super().__init__(size_bytes)
        self.slow_reads = 0

    def read_if_cached(self, offset: int, length: int) -> bytes | None:
        return bytes(self.data[offset : offset + length]) if offset + length <= (1 << 20) else None

    def read_at(self, offset: int, length: int) -> bytes:
        self.slow_reads += 1
        return super().read_at(offset, length)


def test_cached_reads_are_served_inline_and_the_rest_by_read_at(socket_dir: Path) -> None:
    disk = CachedMemoryDisk(DISK_BYTES)
    disk.data[:] = bytes(range(256)) * (DISK_BYTES // 256)
    with NbdServerThread(disk, socket_dir / "c.sock") as server, transmission(server) as sock:
        assert simple_request(sock, Command.READ, 1, 4096, 8, reply_data=8) == (
            0,
            bytes(disk.data[4096:4104]),
        )
        assert disk.slow_reads == 0
        assert simple_request(sock, Command.READ, 2, 2 << 20, 8, reply_data=8) == (
            0,
            bytes(disk.data[2 << 20 :][:8]),
        )
        assert disk.slow_reads == 1
        assert server.unhandled_errors == ()

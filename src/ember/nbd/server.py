"""An asyncio NBD server exporting one ``Disk`` on a unix socket and/or loopback TCP.

Guarantees, per connection:

* requests are read in order and run concurrently: replies may leave out of order, but each
  reply (header and data) is written to the transport in one step, never interleaved;
* disk calls run in a thread pool, because the disk may block on remote storage, so one slow
  read never stalls other requests or clients. The one exception: a disk that also implements
  ``CachedReads`` is asked first, on the event loop, for reads up to ``INLINE_READ_MAX_BYTES``;
  it answers only when it can without waiting (page cache, local chunk file). Measured with
  ``bench/bench_nbd.py`` on a page-cached file: 4 KiB reads at depth 16 went from ~15k to
  ~75k IOPS, sequential nbdcopy from ~700 to ~1400 MiB/s: the thread hand-off costs more
  than the read;
* memory is bounded: at most ``MAX_IN_FLIGHT_REQUESTS`` requests and ``MAX_IN_FLIGHT_BYTES``
  of payload (one oversized-but-legal request excepted) are held at a time, whatever the
  client pipelines; the reader stops reading until replies drain;
* a request the server can answer is answered, even when wrong: unknown command or flag,
  zero length, a READ beyond the end or over 32 MiB -> EINVAL; WRITE / TRIM / WRITE_ZEROES
  beyond the end -> ENOSPC; any write to a read-only export -> EPERM; an oversized WRITE has
  its payload discarded and gets EINVAL. The connection stays usable after all of these;
* a stream that cannot be parsed any more (wrong request magic) and a client that goes away
  mid-request end that connection only; other clients and the server carry on;
* on DISC every outstanding request completes and is answered before the socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, runtime_checkable

from ember.errors import EmberError
from ember.nbd.handshake import MAX_BLOCK_BYTES, Export, negotiate
from ember.nbd.protocol import (
    REQUEST_SIZE,
    Command,
    CommandFlag,
    Errno,
    NbdError,
    ProtocolViolation,
    Request,
    TransmissionFlag,
    decode_request,
    encode_data_chunk_header,
    encode_error_chunk,
    encode_simple_reply,
)

INLINE_READ_MAX_BYTES = 1 << 20
MAX_IN_FLIGHT_REQUESTS = 64
MAX_IN_FLIGHT_BYTES = 64 << 20
DISK_THREADS = 8

_DISCARD_CHUNK_BYTES = 1 << 20
_BATCH_DATA_MAX_BYTES = 64 << 10
_BATCH_MAX_BYTES = 256 << 10
_SEND_BUFFER_BYTES = 4 << 20
_WRITING = frozenset({Command.WRITE, Command.TRIM, Command.WRITE_ZEROES})
_SUPPORTED = frozenset({Command.READ, Command.WRITE, Command.FLUSH, Command.TRIM, Command.WRITE_ZEROES})
_ENOSPC_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

_log = logging.getLogger(__name__)


class Disk(Protocol):
    """What the server needs of a block device (``ember.block``'s overlay is one).

    Calls come from several threads at once; the disk makes overlapping writes safe.
    """

    @property
    def size(self) -> int: ...

    @property
    def block_size(self) -> int: ...

    def read_at(self, offset: int, length: int) -> bytes: ...

    def write_at(self, data: bytes, offset: int) -> None: ...

    def write_zeroes_at(self, offset: int, length: int) -> None: ...

    def flush(self) -> None: ...


@runtime_checkable
class CachedReads(Protocol):
    """Optional for a ``Disk``: a read that never waits on the network or a lock held across I/O."""

    def read_if_cached(self, offset: int, length: int) -> bytes | None:
        """The bytes when they are at hand (local file, memory), else ``None`` (the server then
        calls ``read_at`` in its thread pool)."""
        ...


def transmission_flags(read_only: bool) -> TransmissionFlag:
    """What the server supports; READ_ONLY also makes every writing command fail with EPERM."""
    flags = (
        TransmissionFlag.HAS_FLAGS
        | TransmissionFlag.SEND_FLUSH
        | TransmissionFlag.SEND_TRIM
        | TransmissionFlag.SEND_WRITE_ZEROES
        | TransmissionFlag.CAN_MULTI_CONN
    )
    return flags | TransmissionFlag.READ_ONLY if read_only else flags


class NbdServer:
    """One export served to any number of clients; ``start`` listens, ``close`` ends every connection."""

    def __init__(
        self,
        disk: Disk,
        *,
        export_name: str = "",
        description: str = "",
        read_only: bool = False,
        disk_threads: int = DISK_THREADS,
    ):
        self._disk = disk
        self._read_only = read_only
        self._export = Export(export_name, description, disk.size, transmission_flags(read_only))
        # 0: the event loop's own thread does the disk work (one thread less, requests one at a
        # time), for a disk whose reads are local and short.
        self._executor = (
            ThreadPoolExecutor(disk_threads, thread_name_prefix="nbd-disk") if disk_threads > 0 else None
        )
        self._listeners: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def export_name(self) -> str:
        return self._export.name

    async def start(self, unix_path: Path | None = None, tcp: tuple[str, int] | None = None) -> None:
        """Listen on ``unix_path`` and/or ``tcp`` (port 0 picks a free port); raises NbdError."""
        try:
            if unix_path is not None:
                self._listeners.append(await asyncio.start_unix_server(self._accept, path=str(unix_path)))
            if tcp is not None:
                self._listeners.append(await asyncio.start_server(self._accept, tcp[0], tcp[1]))
        except OSError as exc:
            await self.close()
            where = unix_path if tcp is None else f"{unix_path or ''} {tcp[0]}:{tcp[1]}"
            raise NbdError(f"cannot listen on {where}: {exc}; pick a free port or socket path") from exc

    def tcp_address(self) -> tuple[str, int] | None:
        for listener in self._listeners:
            for sock in listener.sockets:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    host, port = sock.getsockname()[:2]
                    return str(host), int(port)
        return None

    async def adopt(self, sock: socket.socket) -> None:
        """Serve a socket already in the transmission phase (the kernel's end of a socketpair)."""
        reader, writer = await asyncio.open_connection(sock=sock)
        task = asyncio.ensure_future(self._serve(reader, writer, handshake=False))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def close(self) -> None:
        """Stop listening and end every connection; in-flight disk calls finish in their threads."""
        for listener in self._listeners:
            listener.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer, handshake=True)
        except asyncio.CancelledError:
            # ``close`` cancels every connection: that is how a connection ends, not an error (left
            # raised, asyncio's stream callback would log the cancelled task as one).
            pass
        finally:
            self._connections.discard(task)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handshake: bool
    ) -> None:
        peer = writer.get_extra_info("peername") or "unix client"
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER_BYTES)
        try:
            structured = False
            if handshake:
                negotiated = await negotiate(reader, writer, self._export)
                if negotiated is None:
                    return
                structured = negotiated.structured_replies
            connection = _Connection(self._disk, reader, writer, self._executor, structured, self._read_only)
            await connection.run()
        except ProtocolViolation as exc:
            _log.info("dropping NBD client %s: %s", peer, exc)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
            _log.debug("NBD client %s went away: %r", peer, exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


class _Connection:
    """The transmission phase of one client."""

    def __init__(
        self,
        disk: Disk,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        executor: ThreadPoolExecutor | None,
        structured: bool,
        read_only: bool,
    ) -> None:
        self._disk = disk
        self._size = disk.size
        self._read_if_cached = disk.read_if_cached if isinstance(disk, CachedReads) else None
        self._reader = reader
        self._writer = writer
        self._executor = executor
        self._structured = structured
        self._read_only = read_only
        self._tasks: set[asyncio.Task[None]] = set()
        self._requests = 0
        self._bytes = 0
        self._room = asyncio.Event()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._flush_scheduled = False

    async def run(self) -> None:
        try:
            while True:
                request = decode_request(await self._reader.readexactly(REQUEST_SIZE))
                if request.command == Command.DISC:
                    await asyncio.gather(*self._tasks)
                    return
                await self._dispatch(request)
        finally:
            for task in self._tasks:
                task.cancel()
            self._flush()

    async def _dispatch(self, request: Request) -> None:
        cost = request.length if request.command in (Command.READ, Command.WRITE) else 0
        if request.command == Command.WRITE and request.length > MAX_BLOCK_BYTES:
            await self._discard(request.length)
            await self._reply_error(
                request, Errno.EINVAL, f"request of {request.length} bytes exceeds 32 MiB"
            )
            return
        await self._reserve(cost)
        payload = b""
        if request.command == Command.WRITE:
            payload = await self._reader.readexactly(request.length)
        error = self._check(request)
        if error != Errno.OK:
            self._release(cost)
            await self._reply_error(request, error, f"{_name(request.command)}: {error.name}")
            return
        if request.command == Command.READ and self._read_if_cached is not None:
            data = self._read_inline(request)
            if data is not None:
                try:
                    await self._reply_ok(request, data)
                finally:
                    self._release(cost)
                return
        task = asyncio.ensure_future(self._execute(request, payload, cost))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _check(self, request: Request) -> Errno:
        command = request.command
        if command not in _SUPPORTED:
            return Errno.EINVAL
        allowed = CommandFlag.NO_HOLE if command == Command.WRITE_ZEROES else 0
        if request.flags & ~allowed:
            return Errno.EINVAL
        if command == Command.FLUSH:
            return Errno.EINVAL if request.offset or request.length else Errno.OK
        if self._read_only and command in _WRITING:
            return Errno.EPERM
        if request.length == 0 or (command == Command.READ and request.length > MAX_BLOCK_BYTES):
            return Errno.EINVAL
        if request.offset + request.length > self._size:
            return Errno.ENOSPC if command in _WRITING else Errno.EINVAL
        return Errno.OK

    async def _execute(self, request: Request, payload: bytes, cost: int) -> None:
        try:
            work = self._work(request, payload)
            try:
                if self._executor is None:
                    data = work()
                else:
                    data = await asyncio.get_running_loop().run_in_executor(self._executor, work)
            except Exception as exc:  # the disk may raise anything; the client gets an error, we go on
                error = _errno_of(exc)
                if not isinstance(exc, (EmberError, OSError)):
                    _log.exception(
                        "disk failed on %s at %d+%d", _name(request.command), request.offset, request.length
                    )
                await self._reply_error(request, error, f"{_name(request.command)} failed: {exc}")
                return
            if request.command == Command.READ and len(data) != request.length:
                await self._reply_error(
                    request, Errno.EIO, f"disk returned {len(data)} of {request.length} bytes"
                )
                return
            await self._reply_ok(request, data)
        except ConnectionError:
            _log.debug("NBD client left before the reply to %s", _name(request.command))
        finally:
            self._release(cost)

    def _read_inline(self, request: Request) -> bytes | None:
        """The read's bytes if the disk has them at hand; any failure is left to the thread pool path."""
        if request.length > INLINE_READ_MAX_BYTES or self._read_if_cached is None:
            return None
        try:
            data = self._read_if_cached(request.offset, request.length)
        except Exception:  # the pool path retries with read_at and reports its error
            return None
        return data if data is not None and len(data) == request.length else None

    def _work(self, request: Request, payload: bytes) -> Callable[[], bytes]:
        disk, offset, length = self._disk, request.offset, request.length
        command = request.command

        def run() -> bytes:
            if command == Command.READ:
                return disk.read_at(offset, length)
            if command == Command.WRITE:
                disk.write_at(payload, offset)
            elif command == Command.FLUSH:
                disk.flush()
            else:
                disk.write_zeroes_at(offset, length)
            return b""

        return run

    async def _reply_ok(self, request: Request, data: bytes) -> None:
        if request.command == Command.READ and self._structured:
            self._send(encode_data_chunk_header(request.handle, request.offset, len(data)), data)
        else:
            self._send(encode_simple_reply(Errno.OK, request.handle), data)
        await self._writer.drain()

    async def _reply_error(self, request: Request, error: Errno, message: str) -> None:
        if self._structured:
            self._send(encode_error_chunk(request.handle, error, message), b"")
        else:
            self._send(encode_simple_reply(error, request.handle), b"")
        await self._writer.drain()

    def _send(self, header: bytes, data: bytes) -> None:
        """Queue one whole reply. Small replies produced in one loop iteration leave in one
        send (one syscall for a batch of pipelined 4 KiB reads); large ones go out at once."""
        if len(data) > _BATCH_DATA_MAX_BYTES:
            self._flush()
            self._writer.write(header)
            self._writer.write(data)
            return
        self._pending.append(header)
        self._pending.append(data)
        self._pending_bytes += len(header) + len(data)
        if self._pending_bytes > _BATCH_MAX_BYTES:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending and not self._writer.is_closing():
            self._writer.write(b"".join(self._pending))
        self._pending.clear()
        self._pending_bytes = 0

    async def _discard(self, length: int) -> None:
        remaining = length
        while remaining:
            remaining -= len(await self._reader.readexactly(min(remaining, _DISCARD_CHUNK_BYTES)))

    async def _reserve(self, cost: int) -> None:
        while self._requests >= MAX_IN_FLIGHT_REQUESTS or (
            self._bytes and self._bytes + cost > MAX_IN_FLIGHT_BYTES
        ):
            self._room.clear()
            await self._room.wait()
        self._requests += 1
        self._bytes += cost

    def _release(self, cost: int) -> None:
        self._requests -= 1
        self._bytes -= cost
        self._room.set()


def _errno_of(exc: BaseException) -> Errno:
    """ENOSPC when the disk ran out of room (also behind an ember error wrapping the OSError)."""
    for cause in (exc, exc.__cause__):
        if isinstance(cause, OSError) and cause.errno in _ENOSPC_ERRNOS:
            return Errno.ENOSPC
    return Errno.EIO


def _name(command: int) -> str:
    try:
        return Command(command).name
    except ValueError:
        return f"command {command}"

"""A synchronous face for ``NbdServer``: its event loop runs in a thread of the caller's process.

The CLI and tests use this; everything async stays inside ``NbdServer`` (one implementation,
wrapped at the edge). ``stop`` closes every client connection and both listeners, and is safe
to call twice or after a failed ``start``. Errors the loop could not attribute to a client
(a bug, not a hostile peer) are kept in ``unhandled_errors`` so tests can assert there are none.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import threading
import urllib.parse
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from ember.errors import UsageError
from ember.nbd.server import DISK_THREADS, Disk, NbdServer

_STOP_TIMEOUT_S = 30.0
_T = TypeVar("_T")


class ServerState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class NbdServerThread:
    """``NbdServer`` on ``unix_path`` and/or ``tcp`` (``("127.0.0.1", 0)`` picks a port)."""

    def __init__(
        self,
        disk: Disk,
        unix_path: Path | str | None = None,
        tcp: tuple[str, int] | None = None,
        *,
        export_name: str = "",
        description: str = "",
        read_only: bool = False,
        disk_threads: int = DISK_THREADS,
    ) -> None:
        if unix_path is None and tcp is None:
            raise UsageError("NbdServerThread needs a unix_path, a tcp address, or both")
        self._disk = disk
        self._unix_path = Path(unix_path) if unix_path is not None else None
        self._tcp = tcp
        self._export_name = export_name
        self._description = description
        self._read_only = read_only
        self._disk_threads = disk_threads
        self._state = ServerState.NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: NbdServer | None = None
        self._tcp_address: tuple[str, int] | None = None
        self._errors: list[str] = []

    @property
    def state(self) -> ServerState:
        return self._state

    @property
    def unhandled_errors(self) -> tuple[str, ...]:
        return tuple(self._errors)

    @property
    def disk_size(self) -> int:
        return self._disk.size

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        return self._tcp_address

    @property
    def url(self) -> str:
        """The unix socket URL when there is one, else the TCP one (``nbd+unix:///?socket=...``)."""
        self._require(ServerState.RUNNING, "read url")
        name = urllib.parse.quote(self._export_name)
        if self._unix_path is not None:
            return f"nbd+unix:///{name}?socket={self._unix_path}"
        return self.tcp_url

    @property
    def tcp_url(self) -> str:
        self._require(ServerState.RUNNING, "read tcp_url")
        if self._tcp_address is None:
            raise UsageError("this NBD server does not listen on TCP; pass tcp=('127.0.0.1', 0)")
        host, port = self._tcp_address
        return f"nbd://{host}:{port}/{urllib.parse.quote(self._export_name)}"

    def start(self) -> NbdServerThread:
        """Listen; returns self. Raises NbdError (address in use) or UsageError (started twice)."""
        self._require(ServerState.NEW, "start")
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._record_error)
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="nbd-server", daemon=True)
        self._thread.start()
        self._state = ServerState.RUNNING
        try:
            self._server = self._call(self._create())
        except BaseException:
            self.stop()
            raise
        self._tcp_address = self._server.tcp_address()
        return self

    def adopt(self, sock: socket.socket) -> None:
        """Serve ``sock`` from its transmission phase on (no handshake), as the kernel expects."""
        self._require(ServerState.RUNNING, "adopt a socket")
        assert self._server is not None
        self._call(self._server.adopt(sock))

    def stop(self) -> None:
        """Close every connection and listener, then end the loop thread. Idempotent."""
        if self._state is not ServerState.RUNNING:
            self._state = ServerState.STOPPED
            return
        assert self._loop is not None and self._thread is not None
        try:
            if self._server is not None:
                self._call(self._server.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_STOP_TIMEOUT_S)
            self._loop.close()
            if self._unix_path is not None:
                self._unix_path.unlink(missing_ok=True)
            self._state = ServerState.STOPPED

    def __enter__(self) -> NbdServerThread:
        return self.start() if self._state is ServerState.NEW else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def _create(self) -> NbdServer:
        server = NbdServer(
            self._disk,
            export_name=self._export_name,
            description=self._description,
            read_only=self._read_only,
            disk_threads=self._disk_threads,
        )
        await server.start(self._unix_path, self._tcp)
        return server

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_STOP_TIMEOUT_S)

    def _record_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self._errors.append(f"{context.get('message')}: {context.get('exception')!r}")
        loop.default_exception_handler(context)

    def _require(self, state: ServerState, action: str) -> None:
        if self._state is not state:
            raise UsageError(f"cannot {action}: the NBD server is {self._state.value}, not {state.value}")

"""Processes the agent started: pipes pumped by threads, events fanned out to subscribers.

A process outlives the call that started it. Each output pipe has a thread that turns
every read into a ``DataEvent`` and hands it to every current subscriber (the ``Start``
call, and any ``Connect`` calls). Subscribers see events in the order the pump threads
produced them; stdout and stderr are read independently, so their relative order is only
as good as the kernel's. After the process exits *and* both pipes reach EOF (a background
child holding a pipe keeps the process "running", as in the original), each subscriber
gets the ``EndEvent`` and then ``None``; the process then leaves the table.

The child runs in a new session so ``SendSignal`` reaches its whole process group:
``bash -c`` children would otherwise survive a kill and keep the pipes open.

A PTY process (``terminal``) has one output instead of two: the pty's master, whose
reads become ``DataEvent.pty``; input is written to the master, and ``resize`` sets its
window size. Its output ends when every holder of the slave side has closed it (the
read fails with EIO). A process left behind in the background may hold it open forever,
so once the child has exited the pump drains the master only until it has been silent
for ``TERMINAL_SILENCE_S`` (at most ``TERMINAL_DRAIN_S``), then closes it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO

from . import terminal
from .codec import Message
from .connect import Code, RpcError
from .state import User

READ_SIZE = 32 * 1024
TERMINAL_SILENCE_S = 0.1
TERMINAL_DRAIN_S = 1.0

EventQueue = queue.Queue[Message | None]

_SIGNAL_WORDS = {
    signal.SIGKILL: "killed",
    signal.SIGTERM: "terminated",
    signal.SIGINT: "interrupt",
    signal.SIGHUP: "hangup",
    signal.SIGPIPE: "broken pipe",
    signal.SIGQUIT: "quit",
    signal.SIGABRT: "aborted",
    signal.SIGSEGV: "segmentation fault",
}


def end_event(returncode: int) -> Message:
    """The EndEvent of a reaped child, worded like Go's ``ProcessState.String``."""
    if returncode >= 0:
        return {"exit_code": returncode, "exited": True, "status": f"exit status {returncode}"}
    number = -returncode
    try:
        word = _SIGNAL_WORDS.get(signal.Signals(number), signal.Signals(number).name)
    except ValueError:
        word = f"signal {number}"
    return {"exit_code": -1, "exited": False, "status": f"signal: {word}"}


class ManagedProcess:
    """One started process; every method is thread-safe."""

    def __init__(
        self, popen: subprocess.Popen[bytes], config: Message, tag: str | None, master: int | None = None
    ) -> None:
        self._popen = popen
        self.config = config
        self.tag = tag
        self._master = master
        self._is_terminal = master is not None
        self._wake_read, self._wake_write = os.pipe() if master is not None else (-1, -1)
        self._lock = threading.Lock()
        self._stdin_lock = threading.Lock()
        self._input_lock = threading.Lock()
        self._subscribers: list[EventQueue] = []
        self._end: Message | None = None

    @property
    def has_terminal(self) -> bool:
        return self._is_terminal

    @property
    def pid(self) -> int:
        return self._popen.pid

    def info(self) -> Message:
        info: Message = {"config": self.config, "pid": self.pid}
        if self.tag is not None:
            info["tag"] = self.tag
        return info

    def subscribe(self) -> EventQueue:
        """A queue of events from now on; already ended -> holds the end event and None."""
        events: EventQueue = queue.Queue()
        with self._lock:
            if self._end is not None:
                events.put({"end": self._end})
                events.put(None)
            else:
                self._subscribers.append(events)
        return events

    def unsubscribe(self, events: EventQueue) -> None:
        with self._lock:
            if events in self._subscribers:
                self._subscribers.remove(events)

    def _publish(self, event: Message | None) -> None:
        with self._lock:
            for subscriber in self._subscribers:
                subscriber.put(event)

    def write_stdin(self, data: bytes) -> None:
        if self.has_terminal:
            raise RpcError(
                Code.FAILED_PRECONDITION, f"process {self.pid} has a pty: send its input as input.pty"
            )
        with self._stdin_lock:
            stdin = self._popen.stdin
            if stdin is None or stdin.closed:
                raise RpcError(Code.FAILED_PRECONDITION, f"process {self.pid} has no open stdin")
            try:
                stdin.write(data)
                stdin.flush()
            except (BrokenPipeError, ValueError) as exc:
                raise RpcError(
                    Code.FAILED_PRECONDITION, f"stdin of process {self.pid} is closed: {exc}"
                ) from exc

    def write_terminal(self, data: bytes) -> None:
        """Type ``data`` into the process's pty, all of it: waits while the pty's input queue is full.

        The master is non-blocking and the descriptor lock is held only for each ``write``, so
        a program that does not read its input never keeps the reaper from closing the pty.
        """
        if not self._is_terminal:
            raise RpcError(
                Code.FAILED_PRECONDITION, f"process {self.pid} has no pty: send its input as input.stdin"
            )
        view = memoryview(data)
        with self._input_lock:
            while view:
                with self._stdin_lock:
                    master = self._master
                    if master is None:
                        raise RpcError(Code.FAILED_PRECONDITION, f"the pty of process {self.pid} is closed")
                    try:
                        written = os.write(master, view)
                    except BlockingIOError:
                        written = 0
                    except OSError as exc:
                        raise RpcError(
                            Code.FAILED_PRECONDITION,
                            f"the pty of process {self.pid} is closed: {exc.strerror}",
                        ) from exc
                view = view[written:]
                if view and not written:
                    waiter = select.poll()
                    waiter.register(master, select.POLLOUT)
                    waiter.poll(int(TERMINAL_SILENCE_S * 1000))

    def resize(self, rows: int, cols: int) -> None:
        if not self._is_terminal:
            raise RpcError(Code.FAILED_PRECONDITION, f"process {self.pid} has no pty to resize")
        with self._stdin_lock:
            if self._master is None:
                raise RpcError(Code.FAILED_PRECONDITION, f"the pty of process {self.pid} is closed")
            try:
                terminal.resize(self._master, rows, cols)
            except OSError as exc:
                raise RpcError(
                    Code.FAILED_PRECONDITION, f"cannot resize the pty of process {self.pid}: {exc.strerror}"
                ) from exc

    def close_stdin(self) -> None:
        if self.has_terminal:
            raise RpcError(
                Code.FAILED_PRECONDITION,
                f"process {self.pid} has a pty, whose input cannot be closed: send Ctrl-D (0x04) instead",
            )
        with self._stdin_lock:
            stdin = self._popen.stdin
            if stdin is None:
                raise RpcError(Code.FAILED_PRECONDITION, f"process {self.pid} was started without stdin")
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    def send_signal(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(signum)
        except PermissionError as exc:
            raise RpcError(Code.PERMISSION_DENIED, f"cannot signal process {self.pid}: {exc}") from exc

    def run_pumps(self, on_end: Callable[[ManagedProcess], None]) -> None:
        """Start the pump threads and the reaper; ``on_end`` is called after the end event."""
        if self._master is not None:
            pumps = [threading.Thread(target=self._pump_terminal, args=(self._master,), daemon=True)]
        else:
            pumps = [
                threading.Thread(target=self._pump, args=(stream, name), daemon=True)
                for stream, name in ((self._popen.stdout, "stdout"), (self._popen.stderr, "stderr"))
                if stream is not None
            ]
        for pump in pumps:
            pump.start()
        threading.Thread(target=self._reap, args=(pumps, on_end), daemon=True).start()

    def _pump(self, stream: IO[bytes], name: str) -> None:
        fd = stream.fileno()
        while True:
            try:
                data = os.read(fd, READ_SIZE)
            except OSError:
                data = b""
            if not data:
                break
            self._publish({"data": {name: data}})
        stream.close()

    def _pump_terminal(self, master: int) -> None:
        poller = select.poll()
        poller.register(master, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        drain_until: float | None = None
        while True:
            timeout_ms: int | None = None
            if drain_until is not None:
                left_s = drain_until - time.monotonic()
                if left_s <= 0:
                    break
                timeout_ms = int(1000 * min(TERMINAL_SILENCE_S, left_s)) + 1
            ready = {fd for fd, _ in poller.poll(timeout_ms)}
            if self._wake_read in ready:
                poller.unregister(self._wake_read)
                drain_until = time.monotonic() + TERMINAL_DRAIN_S
            if master not in ready:
                if drain_until is not None and not ready:
                    break  # silent since the child exited
                continue
            try:
                data = os.read(master, READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""  # EIO: no one holds the slave side any more
            if not data:
                break
            self._publish({"data": {"pty": data}})

    def _reap(self, pumps: list[threading.Thread], on_end: Callable[[ManagedProcess], None]) -> None:
        returncode = self._popen.wait()
        if self._is_terminal:
            os.write(self._wake_write, b"x")
        for pump in pumps:
            pump.join()
        if self._is_terminal:
            with self._stdin_lock:
                master, self._master = self._master, None
            if master is not None:
                os.close(master)
            os.close(self._wake_read)
            os.close(self._wake_write)
        end = end_event(returncode)
        with self._lock:
            self._end = end
            subscribers, self._subscribers = self._subscribers, []
        for subscriber in subscribers:
            subscriber.put({"end": end})
            subscriber.put(None)
        on_end(self)


class ProcessTable:
    """The running processes by pid; ended ones leave the table."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: dict[int, ManagedProcess] = {}

    def start(
        self,
        config: Message,
        user: User,
        env: Mapping[str, str],
        cwd: str,
        tag: str | None,
        stdin: bool,
        pty_size: tuple[int, int] | None = None,
    ) -> tuple[ManagedProcess, EventQueue]:
        """Spawn the process and return it with a queue subscribed before any output is read.

        With ``pty_size`` (rows, cols) the process runs on a new pty of that size instead of pipes.
        """
        if not os.path.isdir(cwd):
            raise RpcError(Code.INVALID_ARGUMENT, f"working directory {cwd!r} does not exist in the sandbox")
        argv = [config.get("cmd", ""), *config.get("args", [])]
        if not argv[0]:
            raise RpcError(Code.INVALID_ARGUMENT, "process.cmd is empty: give the program to run")
        switch = os.geteuid() == 0 and user.uid != os.geteuid()
        master: int | None = None
        slave: int | None = None
        try:
            if pty_size is not None:
                master, slave = terminal.open_terminal(*pty_size)
                os.set_blocking(master, False)
                if switch:
                    os.fchown(slave, user.uid, -1)
            popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env),
                stdin=slave if slave is not None else subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=slave if slave is not None else subprocess.PIPE,
                stderr=slave if slave is not None else subprocess.PIPE,
                start_new_session=True,
                preexec_fn=terminal.take_controlling_terminal if slave is not None else None,
                user=user.uid if switch else None,
                group=user.gid if switch else None,
                extra_groups=os.getgrouplist(user.name, user.gid) if switch else None,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            if master is not None:
                os.close(master)
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise RpcError(Code.INVALID_ARGUMENT, f"cannot start {argv[0]!r}: {message}") from exc
        finally:
            if slave is not None:
                os.close(slave)
        managed = ManagedProcess(popen, config, tag, master)
        events = managed.subscribe()
        with self._lock:
            self._processes[managed.pid] = managed
        managed.run_pumps(self._forget)
        return managed, events

    def _forget(self, managed: ManagedProcess) -> None:
        with self._lock:
            self._processes.pop(managed.pid, None)

    def list(self) -> list[ManagedProcess]:
        with self._lock:
            return sorted(self._processes.values(), key=lambda process: process.pid)

    def select(self, selector: Message | None) -> ManagedProcess:
        """The process a ``ProcessSelector`` names; raises ``not_found`` / ``invalid_argument``."""
        selector = selector or {}
        with self._lock:
            if "pid" in selector:
                found = self._processes.get(int(selector["pid"]))
                wanted = f"pid {selector['pid']}"
            elif "tag" in selector:
                found = next((p for p in self._processes.values() if p.tag == selector["tag"]), None)
                wanted = f"tag {selector['tag']!r}"
            else:
                raise RpcError(Code.INVALID_ARGUMENT, "process selector is empty: set pid or tag")
        if found is None:
            raise RpcError(Code.NOT_FOUND, f"process with {wanted} not found (it may have ended)")
        return found

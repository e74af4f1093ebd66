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
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from typing import IO

from .codec import Message
from .connect import Code, RpcError
from .state import User

READ_SIZE = 32 * 1024

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

    def __init__(self, popen: subprocess.Popen[bytes], config: Message, tag: str | None) -> None:
        self._popen = popen
        self.config = config
        self.tag = tag
        self._lock = threading.Lock()
        self._stdin_lock = threading.Lock()
        self._subscribers: list[EventQueue] = []
        self._end: Message | None = None

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

    def close_stdin(self) -> None:
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

    def _reap(self, pumps: list[threading.Thread], on_end: Callable[[ManagedProcess], None]) -> None:
        returncode = self._popen.wait()
        for pump in pumps:
            pump.join()
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
        self, config: Message, user: User, env: Mapping[str, str], cwd: str, tag: str | None, stdin: bool
    ) -> tuple[ManagedProcess, EventQueue]:
        """Spawn the process and return it with a queue subscribed before any output is read."""
        if not os.path.isdir(cwd):
            raise RpcError(Code.INVALID_ARGUMENT, f"working directory {cwd!r} does not exist in the sandbox")
        argv = [config.get("cmd", ""), *config.get("args", [])]
        if not argv[0]:
            raise RpcError(Code.INVALID_ARGUMENT, "process.cmd is empty: give the program to run")
        switch = os.geteuid() == 0 and user.uid != os.geteuid()
        try:
            popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                user=user.uid if switch else None,
                group=user.gid if switch else None,
                extra_groups=os.getgrouplist(user.name, user.gid) if switch else None,
            )
        except OSError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"cannot start {argv[0]!r}: {exc.strerror or exc}") from exc
        managed = ManagedProcess(popen, config, tag)
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

"""``process.Process``: start, attach to, feed, signal and list processes.

Streams (``Start``, ``Connect``) begin with a ``start{pid}`` event, then relay the
process's events; while the process is silent they send ``keepalive`` every
``Keepalive-Ping-Interval`` seconds (the SDK sends 50), which is also how a vanished
client is noticed. Ending a stream, by deadline or disconnect, never stops the process:
``Connect`` re-attaches by pid or tag, and only ``SendSignal`` ends it early.

``Start`` with ``pty`` runs the process on a pseudo-terminal (``terminal``): its output
arrives as ``data.pty``, its input goes in as ``input.pty`` (``SendInput``,
``StreamInput``), ``Update`` with ``pty.size`` resizes it, and ``TERM`` is
``xterm-256color`` unless the call or /init sets it. Input of the wrong kind for the
process is ``failed_precondition``.
"""

from __future__ import annotations

import queue
import signal
from collections.abc import Iterator

from . import terminal
from .codec import Message
from .connect import Call, Code, Method, RpcError, Shape
from .processes import EventQueue, ManagedProcess, ProcessTable
from .state import AgentState, process_environment, resolve_path

DEFAULT_KEEPALIVE_S = 50.0
_KEEPALIVE: Message = {"keepalive": {}}


def keepalive_interval_s(call: Call) -> float:
    raw = call.headers.get("Keepalive-Ping-Interval", "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_KEEPALIVE_S
    return value if value > 0 else DEFAULT_KEEPALIVE_S


def relay(call: Call, events: queue.Queue[Message | None], keepalive: Message) -> Iterator[Message]:
    """Yield queued events until ``None``, with ``keepalive`` in silences, until the deadline."""
    interval_s = keepalive_interval_s(call)
    while True:
        remaining_s = call.remaining_s()
        try:
            item = events.get(timeout=interval_s if remaining_s is None else min(interval_s, remaining_s))
        except queue.Empty:
            call.check_deadline()
            yield keepalive
            continue
        if item is None:
            return
        yield item


class ProcessService:
    def __init__(self, state: AgentState, table: ProcessTable) -> None:
        self._state = state
        self._table = table

    def methods(self) -> dict[str, Method]:
        return {
            "Start": Method("process.StartRequest", "process.StartResponse", Shape.SERVER_STREAM, self.start),
            "Connect": Method(
                "process.ConnectRequest", "process.ConnectResponse", Shape.SERVER_STREAM, self.connect
            ),
            "List": Method("process.ListRequest", "process.ListResponse", Shape.UNARY, self.list),
            "SendInput": Method(
                "process.SendInputRequest", "process.SendInputResponse", Shape.UNARY, self.send_input
            ),
            "SendSignal": Method(
                "process.SendSignalRequest", "process.SendSignalResponse", Shape.UNARY, self.send_signal
            ),
            "CloseStdin": Method(
                "process.CloseStdinRequest", "process.CloseStdinResponse", Shape.UNARY, self.close_stdin
            ),
            "StreamInput": Method(
                "process.StreamInputRequest",
                "process.StreamInputResponse",
                Shape.CLIENT_STREAM,
                self.stream_input,
            ),
            "Update": Method("process.UpdateRequest", "process.UpdateResponse", Shape.UNARY, self.update),
        }

    def start(self, call: Call, request: Message) -> Iterator[Message]:
        config = request.get("process")
        if not config:
            raise RpcError(Code.INVALID_ARGUMENT, "StartRequest.process is missing: give cmd and args")
        size = terminal.pty_size(request["pty"]) if "pty" in request else None
        user = self._state.resolve_user(call.username)
        settings = self._state.snapshot()
        cwd = config.get("cwd") or settings.default_workdir or user.home
        env = process_environment(user, settings, config.get("envs", {}))
        if size is not None and "TERM" not in settings.env_vars and "TERM" not in config.get("envs", {}):
            env["TERM"] = terminal.DEFAULT_TERM  # not the agent's own (a serial console's "linux")
        process, events = self._table.start(
            config, user, env, resolve_path(cwd, user), request.get("tag"), request.get("stdin", True), size
        )
        return self._stream(call, process, events)

    def connect(self, call: Call, request: Message) -> Iterator[Message]:
        process = self._table.select(request.get("process"))
        return self._stream(call, process, process.subscribe())

    def _stream(self, call: Call, process: ManagedProcess, events: EventQueue) -> Iterator[Message]:
        try:
            yield {"event": {"start": {"pid": process.pid}}}
            for event in relay(call, events, _KEEPALIVE):
                yield {"event": event}
        finally:
            process.unsubscribe(events)

    def list(self, call: Call, request: Message) -> Message:
        return {"processes": [process.info() for process in self._table.list()]}

    def send_input(self, call: Call, request: Message) -> Message:
        process = self._table.select(request.get("process"))
        self._write(process, request.get("input", {}))
        return {}

    def _write(self, process: ManagedProcess, process_input: Message) -> None:
        if "pty" in process_input:
            process.write_terminal(process_input["pty"])
        else:
            process.write_stdin(process_input.get("stdin", b""))

    def send_signal(self, call: Call, request: Message) -> Message:
        process = self._table.select(request.get("process"))
        number = int(request.get("signal", 0))
        if number not in (signal.SIGTERM, signal.SIGKILL):
            raise RpcError(Code.INVALID_ARGUMENT, f"signal {number} is not SIGNAL_SIGTERM or SIGNAL_SIGKILL")
        process.send_signal(number)
        return {}

    def close_stdin(self, call: Call, request: Message) -> Message:
        self._table.select(request.get("process")).close_stdin()
        return {}

    def stream_input(self, call: Call, requests: Iterator[Message]) -> Message:
        process: ManagedProcess | None = None
        for request in requests:
            if "start" in request:
                process = self._table.select(request["start"].get("process"))
            elif "data" in request:
                if process is None:
                    raise RpcError(Code.FAILED_PRECONDITION, "StreamInput sent data before its start event")
                self._write(process, request["data"].get("input", {}))
        return {}

    def update(self, call: Call, request: Message) -> Message:
        process = self._table.select(request.get("process"))
        if "pty" in request:
            process.resize(*terminal.pty_size(request["pty"]))
        return {}

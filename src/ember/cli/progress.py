"""How the commands show a sandbox's lifecycle events, and how they stop on a signal.

The library reports structured ``SandboxEvent``s; the commands print the ones a user follows
(the seed's emoji lines), and with ``-v`` all of them. SIGTERM (a ``systemctl stop``, a
``timeout``) must end a command as Ctrl+C does: unwinding, so the sandbox is killed and its
slot, mounts and workspace are released; ``stop_on_signals`` turns the first SIGTERM into
``Terminated`` and ignores repeats while the cleanup runs. A process forked from the command
(pyroute2 forks its namespace helpers) keeps SIGTERM's default: it just ends.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from ember.sandbox import SandboxEvent

_SHOWN = {
    "paused": "⏸ Paused, exporting the diffs",
    "phase": "  {message}",
    "progress": "{message}",
    "image-layer": "✓ {message}",
    "start-command": "▶ {message}",
    "ready-command": "⏳ {message}",
    "ready": "✓ {message}",
    "kill-failed": "⚠ {message}",
    "cleanup-problem": "⚠ {message}",
    "slot-leak": "⚠ {message}",
}


class Terminated(BaseException):
    """The command got SIGTERM: like KeyboardInterrupt, it unwinds every ``with`` on its way out."""


class EventPrinter:
    """Prints the events a user follows; every event, prefixed with its name, when ``verbose``."""

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self._lock = threading.Lock()

    def __call__(self, event: SandboxEvent) -> None:
        template = _SHOWN.get(event.name)
        if template is None and not self.verbose:
            return
        line = (template or "   [{name}] {message}").format(name=event.name, message=event.message)
        with self._lock:
            print(line, flush=True)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """In the block, the first SIGTERM raises ``Terminated`` in the main thread; later ones are ignored."""

    owner = os.getpid()

    def terminate(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:  # a helper forked from this process (pyroute2's netns helper)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("⏹ SIGTERM: stopping the sandbox", file=sys.stderr, flush=True)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

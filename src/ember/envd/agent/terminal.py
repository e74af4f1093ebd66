"""Pseudo-terminals for ``Process/Start`` with ``pty``: sizes, opening, resizing, the child's side.

A PTY process gets the slave side of a fresh pty as stdin, stdout and stderr, in a new
session of which the pty is the controlling terminal (so a shell has job control and
Ctrl-C reaches the foreground job). The agent keeps the master: what the process writes
is read from it, input is written to it, and ``TIOCSWINSZ`` on it resizes the terminal
(the kernel sends SIGWINCH to the foreground process group). A size of 0 in either
dimension means "not given" and becomes 24 rows by 80 columns; the kernel's window size
fields are 16 bits, so larger values are refused.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios

from .codec import Message
from .connect import Code, RpcError

DEFAULT_ROWS = 24
DEFAULT_COLS = 80
MAX_DIMENSION = 0xFFFF
DEFAULT_TERM = "xterm-256color"
_WINSIZE = struct.Struct("HHHH")  # rows, cols, x pixels, y pixels


def pty_size(pty: Message | None) -> tuple[int, int]:
    """(rows, cols) of a ``process.PTY`` message; raises ``invalid_argument`` when out of range."""
    size = (pty or {}).get("size") or {}
    rows = int(size.get("rows", 0)) or DEFAULT_ROWS
    cols = int(size.get("cols", 0)) or DEFAULT_COLS
    if not (0 < rows <= MAX_DIMENSION and 0 < cols <= MAX_DIMENSION):
        raise RpcError(
            Code.INVALID_ARGUMENT,
            f"pty size {rows} rows x {cols} cols is out of range: each must be 1..{MAX_DIMENSION}",
        )
    return rows, cols


def winsize(rows: int, cols: int) -> bytes:
    """The ``struct winsize`` for ``TIOCSWINSZ``."""
    return _WINSIZE.pack(rows, cols, 0, 0)


def parse_winsize(data: bytes) -> tuple[int, int]:
    """(rows, cols) of a ``struct winsize`` from ``TIOCGWINSZ``."""
    rows, cols, _, _ = _WINSIZE.unpack(data[: _WINSIZE.size])
    return rows, cols


def resize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, winsize(rows, cols))


def size_of(fd: int) -> tuple[int, int]:
    return parse_winsize(fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(_WINSIZE.size)))


def open_terminal(rows: int, cols: int) -> tuple[int, int]:
    """A new pty of the given size: (master, slave), neither inherited by children."""
    master, slave = os.openpty()
    try:
        resize(master, rows, cols)
    except OSError:
        os.close(master)
        os.close(slave)
        raise
    return master, slave


def take_controlling_terminal() -> None:
    """In the child, after ``setsid`` and with the slave as fd 0: make it the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)

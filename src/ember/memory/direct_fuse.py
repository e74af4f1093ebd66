"""mfusepy's ``FUSE`` with reads filled straight into libfuse's reply buffer.

mfusepy calls an operations object's ``read(path, size, offset, fh)`` for bytes and copies
them into libfuse's buffer. For guest memory that meant two fresh buffers per request (the
read's and the returned ``bytes``) and a second copy. A fresh 1 MiB buffer is not cheap
here: glibc hands out allocations of that size as new mappings, and faulting in their 256
pages cost ~0.9 ms per request on these PVM machines, 4-5x the read itself. So here the
operations' ``read(path, buffer, offset, fh)`` fills a memoryview over libfuse's buffer and
returns how many bytes it filled: no allocation, one copy.

Lending libfuse's buffer to Python has two hazards, both guarded here:

* the buffer is freed once the callback returns, so no view of it may outlive the call:
  the views are released on the way out, and an exception's frames (which hold the
  operations' slices of the buffer as locals) are cleared before it leaves, since mfusepy
  logs exceptions and keeps a critical one;
* a reply longer than ``size`` would make libfuse send bytes past the buffer: mfusepy's own
  ``read`` asserts ``retsize <= size``; here such a reply is logged and answered with EIO.

This subclasses mfusepy internals (the ``read`` callback's signature, ``raw_fi``), so
pyproject pins ``mfusepy<4`` and a unit test checks the installed signature.

Imported only by processes that mount (importing mfusepy loads libfuse3).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import traceback
from typing import Any, Protocol

import mfusepy

_log = logging.getLogger(__name__)


class DirectReadOperations(Protocol):
    def read(self, path: str | None, buffer: memoryview, offset: int, fh: int) -> int: ...


class DirectReadFUSE(mfusepy.FUSE):  # type: ignore[misc]
    """``mfusepy.FUSE`` whose read callback hands the operations a view of libfuse's buffer."""

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        fh = fip.contents if self.raw_fi else fip.contents.fh
        address = ctypes.cast(buf, ctypes.c_void_p).value
        if not size or address is None:
            return 0
        operations: DirectReadOperations = self.operations
        name = None if path is None else path.decode(self.encoding, self.errors)
        try:
            with (
                memoryview((ctypes.c_char * size).from_address(address)) as raw,
                raw.cast("B") as view,
            ):
                filled = operations.read(name, view, offset, fh)
        except BaseException as exc:
            _forget_frames(exc)
            raise
        if not 0 <= filled <= size:
            _log.error(
                "FUSE read of %d bytes at %d reported %d bytes filled: answering EIO", size, offset, filled
            )
            raise OSError(errno.EIO, f"the read reported {filled} bytes for a {size}-byte buffer")
        return filled


def _forget_frames(exc: BaseException) -> None:
    """Drop the locals of every finished frame in ``exc``'s tracebacks (and its causes').

    They may hold slices of libfuse's buffer, which outlive the view they came from.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        pending += [current.__cause__, current.__context__]

"""mfusepy's ``FUSE`` with reads filled straight into libfuse's reply buffer.

mfusepy calls an operations object's ``read(path, size, offset, fh)`` for bytes and copies
them into libfuse's buffer. For guest memory that meant two fresh buffers per request (the
read's and the returned ``bytes``) and a second copy. A fresh 1 MiB buffer is not cheap
here: glibc hands out allocations of that size as new mappings, and faulting in their 256
pages cost ~0.9 ms per request on these PVM machines, 4-5x the read itself. So here the
operations' ``read(path, buffer, offset, fh)`` fills a memoryview over libfuse's buffer and
returns how many bytes it filled: no allocation, one copy.

Imported only by processes that mount (importing mfusepy loads libfuse3).
"""

from __future__ import annotations

import ctypes
from typing import Any, Protocol

import mfusepy


class DirectReadOperations(Protocol):
    def read(self, path: str | None, buffer: memoryview, offset: int, fh: int) -> int: ...


class DirectReadFUSE(mfusepy.FUSE):  # type: ignore[misc]
    """``mfusepy.FUSE`` whose read callback hands the operations a view of libfuse's buffer."""

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        fh = fip.contents if self.raw_fi else fip.contents.fh
        address = ctypes.cast(buf, ctypes.c_void_p).value
        if not size or address is None:
            return 0
        view = memoryview((ctypes.c_char * size).from_address(address)).cast("B")
        operations: DirectReadOperations = self.operations
        name = None if path is None else path.decode(self.encoding, self.errors)
        return operations.read(name, view, offset, fh)

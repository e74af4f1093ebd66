"""The in-place FUSE read callback: its guards around libfuse's buffer, and the mfusepy it relies on.

The callback is driven directly with a ctypes buffer standing in for libfuse's, so no mount
is needed; the signature test is what fails first when an mfusepy upgrade changes the
internals ``DirectReadFUSE`` overrides.
"""

from __future__ import annotations

import ctypes
import errno
import inspect
import weakref
from types import SimpleNamespace
from typing import Any

import pytest

mfusepy = pytest.importorskip("mfusepy", exc_type=OSError, reason="needs libfuse3 (Debian package fuse3)")

from ember.memory.direct_fuse import DirectReadFUSE  # noqa: E402

SIZE = 16


class Operations:
    """Fills the buffer with ``fill`` bytes, reports ``report`` (or ``fill``), optionally misbehaving."""

    def __init__(self, fill: int = SIZE, report: int | None = None, fail: bool = False) -> None:
        self.fill = fill
        self.report = fill if report is None else report
        self.fail = fail
        self.kept: memoryview | None = None
        self.slices: list[weakref.ref[memoryview]] = []

    def read(self, path: str | None, buffer: memoryview, offset: int, fh: int) -> int:
        part = buffer[: self.fill]
        part[:] = b"m" * self.fill
        self.slices.append(weakref.ref(part))
        self.kept = buffer  # a careless operation keeping the buffer past the call
        if self.fail:
            raise OSError(errno.EIO, "the base device failed")
        return self.report


def _read(operations: Operations, buffer: Any) -> int:
    fuse = SimpleNamespace(raw_fi=False, operations=operations, encoding="utf-8", errors="surrogateescape")
    file_info = SimpleNamespace(contents=SimpleNamespace(fh=3))
    result: int = DirectReadFUSE.read(fuse, b"/memfile", buffer, SIZE, 0, file_info)
    return result


def test_a_read_fills_libfuses_buffer_in_place_and_returns_the_count() -> None:
    buffer = ctypes.create_string_buffer(SIZE)
    assert _read(Operations(fill=10), buffer) == 10
    assert buffer.raw == b"m" * 10 + bytes(SIZE - 10)


def test_a_reply_longer_than_the_buffer_is_eio_not_an_over_read() -> None:
    with pytest.raises(OSError) as caught:
        _read(Operations(report=SIZE + 1), ctypes.create_string_buffer(SIZE))
    assert caught.value.errno == errno.EIO


def test_no_view_of_libfuses_buffer_stays_usable_after_the_call() -> None:
    operations = Operations()
    _read(operations, ctypes.create_string_buffer(SIZE))
    assert operations.kept is not None
    with pytest.raises(ValueError, match="released"):
        operations.kept[0] = 0


def test_a_failed_read_leaves_no_slice_of_the_buffer_alive_in_its_traceback() -> None:
    operations = Operations(fail=True)
    with pytest.raises(OSError) as caught:
        _read(operations, ctypes.create_string_buffer(SIZE))
    assert caught.value.__traceback__ is not None  # the exception, with its frames, is still held here
    assert [ref() for ref in operations.slices] == [None]


def test_the_installed_mfusepy_has_the_read_callback_direct_read_fuse_overrides() -> None:
    parameters = list(inspect.signature(mfusepy.FUSE.read).parameters)
    assert parameters == list(inspect.signature(DirectReadFUSE.read).parameters)
    assert parameters == ["self", "path", "buf", "size", "offset", "fip"]
    assert "raw_fi" in inspect.signature(mfusepy.FUSE.__init__).parameters
    prototype = dict(mfusepy.fuse_operations._fields_)["read"]
    assert prototype._restype_ is ctypes.c_int
    assert prototype._argtypes_[0] is ctypes.c_char_p
    assert prototype._argtypes_[2] is ctypes.c_size_t
    assert len(prototype._argtypes_) == 5

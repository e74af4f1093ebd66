"""userfaultfd messages and ioctls through ctypes."""

from __future__ import annotations

import ctypes
import mmap
import os
import struct

import pytest

from ember.errors import VmError
from ember.uffd import Userfaultfd, negotiate_api, open_userfaultfd
from ember.uffd.ioctl import EVENT_PAGEFAULT, EVENT_REMOVE, FEATURE_EVENT_REMOVE, parse_messages


def _message(event: int, first: int, second: int) -> bytes:
    return struct.pack("<B7xQQ8x", event, first, second)


def test_messages_decode_page_faults_and_removes_and_ignore_a_partial_tail() -> None:
    data = (
        _message(EVENT_PAGEFAULT, 1, 0x7F00_0000_1234) + _message(EVENT_REMOVE, 0x1000, 0x3000) + b"\x12" * 5
    )
    fault, remove = parse_messages(data)
    assert (fault.event, fault.second, fault.is_write) == (EVENT_PAGEFAULT, 0x7F00_0000_1234, True)
    assert (remove.event, remove.first, remove.second) == (EVENT_REMOVE, 0x1000, 0x3000)
    assert parse_messages(_message(EVENT_PAGEFAULT, 0, 0))[0].is_write is False


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="userfaultfd needs root here")


@root_only
def test_the_api_handshake_offers_the_features_firecracker_relies_on() -> None:
    fd = open_userfaultfd()
    try:
        assert negotiate_api(fd, FEATURE_EVENT_REMOVE) & FEATURE_EVENT_REMOVE
        with pytest.raises(VmError, match="UFFDIO_API failed"):
            negotiate_api(fd, 0)  # the API handshake happens once per fd
    finally:
        os.close(fd)


@root_only
def test_an_install_into_memory_nobody_registered_raises_with_advice() -> None:
    fd = open_userfaultfd()
    target = mmap.mmap(-1, 4096)
    try:
        negotiate_api(fd, 0)
        source = bytearray(4096)
        source_address = ctypes.addressof(ctypes.c_char.from_buffer(source))
        target_address = ctypes.addressof(ctypes.c_char.from_buffer(target))
        with pytest.raises(VmError, match=r"UFFDIO_COPY of 4096 bytes .* not registered"):
            Userfaultfd(fd).copy(target_address, source_address, 4096)
    finally:
        target.close()
        os.close(fd)

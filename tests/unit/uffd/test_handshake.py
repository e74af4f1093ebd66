"""Firecracker's region list and fds: what is accepted, and that everything else is refused cleanly."""

from __future__ import annotations

import array
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from ember.errors import VmError
from ember.uffd import HandshakeListener, Region, open_userfaultfd, parse_regions, receive_handshake

MIB = 1 << 20


def _region(**overrides: Any) -> dict[str, Any]:
    region = {"base_host_virt_addr": 0x7F00_0000_0000, "size": 64 * MIB, "offset": 0, "page_size_kib": 4096}
    region.update(overrides)
    return region


def _payload(*regions: dict[str, Any]) -> bytes:
    return json.dumps(list(regions)).encode()


def test_firecracker_1_12s_regions_are_read_with_page_size_kib_holding_bytes() -> None:
    payload = _payload(
        _region(), _region(base_host_virt_addr=0x7F10_0000_0000, offset=64 * MIB, page_size=4096)
    )
    assert parse_regions(payload) == (
        Region(0x7F00_0000_0000, 64 * MIB, 0, 4096),
        Region(0x7F10_0000_0000, 64 * MIB, 64 * MIB, 4096),
    )


def test_hugepage_regions_are_accepted() -> None:
    (region,) = parse_regions(_payload(_region(page_size=2 * MIB, page_size_kib=2 * MIB)))
    assert region.page_size == 2 * MIB
    assert region.end_host_virt_addr == 0x7F00_0000_0000 + 64 * MIB


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"{}", "JSON array"),
        (b"[]", "JSON array"),
        (
            _payload(*[_region(base_host_virt_addr=i * 64 * MIB, offset=i * 64 * MIB) for i in range(257)]),
            "array",
        ),
        (b"[1]", "not a JSON object"),
        (_payload(_region(size="64")), "'size'"),
        (_payload(_region(size=True)), "'size'"),
        (_payload(_region(offset=-4096)), "'offset'"),
        (_payload(_region(offset=1 << 64)), "'offset'"),
        (_payload(_region(page_size_kib=None)), "'page_size'"),
        (_payload(_region(page_size_kib=8192)), "page size 8192"),
        (_payload(_region(size=0)), "size 0"),
        (_payload(_region(base_host_virt_addr=(1 << 64) - 4096, size=8192)), "size 8192"),
        (_payload(_region(offset=100)), "not a multiple"),
        (_payload(_region(size=64 * MIB, page_size=2 * MIB, base_host_virt_addr=4096)), "not a multiple"),
        (
            _payload(_region(), _region(base_host_virt_addr=0x7F10_0000_0000, page_size=2 * MIB)),
            "different page",
        ),
        (_payload(_region(), _region(base_host_virt_addr=0x7F00_0100_0000, offset=64 * MIB)), "host address"),
        (_payload(_region(), _region(base_host_virt_addr=0x7F10_0000_0000, offset=MIB)), "memory file"),
    ],
)
def test_malformed_or_hostile_region_lists_are_refused_with_the_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(VmError, match="invalid guest memory handshake") as caught:
        parse_regions(payload)
    assert reason in str(caught.value)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _send(fds: list[int], payload: bytes) -> socket.socket:
    """A connected socket from which ``payload`` and ``fds`` can be received."""
    sender, receiver = socket.socketpair()
    with sender:
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        sender.sendmsg([payload], rights)
    return receiver


@pytest.mark.skipif(os.geteuid() != 0, reason="userfaultfd needs root here")
def test_a_handshake_carries_the_regions_and_a_nonblocking_userfaultfd() -> None:
    uffd = open_userfaultfd(nonblocking=False)
    try:
        with _send([uffd], _payload(_region())) as receiver:
            handshake = receive_handshake(receiver)
    finally:
        os.close(uffd)
    try:
        assert handshake.page_size == 4096
        assert handshake.memfd is None
        assert os.readlink(f"/proc/self/fd/{handshake.uffd}") == "anon_inode:[userfaultfd]"
        assert os.get_blocking(handshake.uffd) is False
    finally:
        handshake.close()


def test_a_handshake_whose_fd_is_not_a_userfaultfd_is_refused_and_its_fds_closed() -> None:
    read_end, write_end = os.pipe()
    before = _open_fds()
    with _send([read_end, write_end], _payload(_region())) as receiver, pytest.raises(VmError, match="pipe"):
        receive_handshake(receiver)
    assert _open_fds() == before
    os.close(read_end)
    os.close(write_end)


@pytest.mark.parametrize("count", [0, 3])
def test_a_handshake_with_the_wrong_number_of_fds_is_refused(count: int) -> None:
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(count)]
    before = _open_fds()
    with _send(fds, _payload(_region())) as receiver, pytest.raises(VmError, match=f"received {count}"):
        receive_handshake(receiver)
    assert _open_fds() == before
    for fd in fds:
        os.close(fd)


def test_the_listener_socket_is_world_connectable_and_removed_on_close(tmp_path: Path) -> None:
    listener = HandshakeListener(tmp_path / "uffd.sock")
    assert (tmp_path / "uffd.sock").stat().st_mode & 0o777 == 0o777
    listener.close()
    assert not (tmp_path / "uffd.sock").exists()


def test_accept_gives_up_after_its_deadline_and_returns_none_when_cancelled(tmp_path: Path) -> None:
    listener = HandshakeListener(tmp_path / "uffd.sock")
    try:
        with pytest.raises(VmError, match="nothing connected"):
            listener.accept(timeout_s=0.05)
        cancel_read, cancel_write = os.pipe()
        os.write(cancel_write, b"x")
        assert listener.accept(timeout_s=5, cancel_fd=cancel_read) is None
        os.close(cancel_read)
        os.close(cancel_write)
    finally:
        listener.close()


def test_a_listener_in_a_missing_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(VmError, match="check the directory"):
        HandshakeListener(tmp_path / "missing" / "uffd.sock")

"""PTY sizes and the pty mechanism the agent's terminal processes use."""

from __future__ import annotations

import os

import pytest

from ember.envd.agent import terminal
from ember.envd.agent.connect import Code, RpcError


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"size": {"rows": 30, "cols": 100}}, (30, 100)),
        ({"size": {"cols": 132}}, (24, 132)),
        ({"size": {"rows": 50}}, (50, 80)),
        ({}, (24, 80)),
        (None, (24, 80)),
        ({"size": {"rows": 65535, "cols": 1}}, (65535, 1)),
    ],
)
def test_pty_size_reads_rows_and_cols_with_24_by_80_for_what_is_missing(
    message: dict[str, object] | None, expected: tuple[int, int]
) -> None:
    assert terminal.pty_size(message) == expected


@pytest.mark.parametrize("size", [{"rows": 65536, "cols": 80}, {"rows": 24, "cols": 1 << 20}])
def test_pty_size_beyond_16_bits_is_invalid(size: dict[str, int]) -> None:
    with pytest.raises(RpcError) as caught:
        terminal.pty_size({"size": size})
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert "out of range" in caught.value.message


def test_winsize_is_rows_cols_then_zero_pixels_in_native_shorts() -> None:
    packed = terminal.winsize(30, 100)
    assert len(packed) == 8
    assert terminal.parse_winsize(packed) == (30, 100)
    assert packed[4:] == bytes(4)


def test_a_new_terminal_has_its_size_and_resizes() -> None:
    master, slave = terminal.open_terminal(30, 100)
    try:
        assert terminal.size_of(slave) == (30, 100)
        terminal.resize(master, 40, 120)
        assert terminal.size_of(slave) == (40, 120)
        assert not os.get_inheritable(master) and not os.get_inheritable(slave)
        os.write(slave, b"out\n")
        assert os.read(master, 100) == b"out\r\n"  # the line discipline maps NL to CR NL
    finally:
        os.close(master)
        os.close(slave)

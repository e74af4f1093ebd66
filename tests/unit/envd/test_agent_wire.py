"""Protobuf wire primitives: varints, zigzag, field iteration and its refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.envd.agent import wire


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
     (-1, b"\xff" * 9 + b"\x01")],
)  # fmt: skip
def test_varint_matches_the_protobuf_encoding(value: int, encoded: bytes) -> None:
    assert wire.encode_varint(value) == encoded
    decoded, offset = wire.decode_varint(encoded, 0)
    assert (wire.to_signed(decoded, 64), offset) == (value, len(encoded))


@given(st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1))
def test_zigzag_round_trips_every_int64(value: int) -> None:
    assert wire.zigzag_decode(wire.zigzag_encode(value)) == value
    assert wire.zigzag_encode(value) >= 0


def test_zigzag_interleaves_small_signed_values() -> None:
    assert [wire.zigzag_encode(v) for v in (0, -1, 1, -2, 2)] == [0, 1, 2, 3, 4]


def test_iter_fields_returns_every_wire_type() -> None:
    data = (
        wire.varint_field(1, 150)
        + wire.len_field(2, b"abc")
        + wire.tag(3, wire.I64) + (7).to_bytes(8, "little")
        + wire.tag(4, wire.I32) + (9).to_bytes(4, "little")
    )  # fmt: skip
    assert list(wire.iter_fields(data)) == [(1, 0, 150), (2, 2, b"abc"), (3, 1, 7), (4, 5, 9)]


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"\x08", "truncated varint"),
        (b"\x12\x05ab", "past the end"),
        (b"\x00\x01", "field number 0"),
        (b"\x0b", "wire type 3"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
    ],
)
def test_malformed_bytes_are_refused(data: bytes, complaint: str) -> None:
    with pytest.raises(wire.WireError, match=complaint):
        list(wire.iter_fields(data))

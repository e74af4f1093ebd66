"""Protocol Buffers wire format: varints, tags and length-delimited fields, no schema.

A message is a sequence of fields, each a tag varint then a payload::

    tag = (field_number << 3) | wire_type
    wire_type 0  VARINT   base-128, little-endian groups, high bit = more bytes follow
    wire_type 1  I64      8 bytes little-endian
    wire_type 2  LEN      varint length | payload (strings, bytes, nested messages, map entries)
    wire_type 5  I32      4 bytes little-endian

Negative ``int32``/``int64`` values travel as their 64-bit two's complement (10 bytes);
``sint32``/``sint64`` use zigzag (0, -1, 1, -2 ... -> 0, 1, 2, 3 ...). Fields may come in
any order and a field number may repeat: the reader keeps every occurrence in order.
Unknown wire types 3 and 4 (groups) are refused: no message here uses them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

VARINT = 0
I64 = 1
LEN = 2
I32 = 5

_UINT64_MASK = (1 << 64) - 1


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def encode_varint(value: int) -> bytes:
    """Encode a non-negative integer, or a negative one as 64-bit two's complement."""
    value &= _UINT64_MASK
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes, offset: int) -> tuple[int, int]:
    """Read one varint at ``offset``; return (unsigned value, offset after it)."""
    result = 0
    shift = 0
    while True:
        if offset >= len(data):
            raise WireError("truncated varint")
        byte = data[offset]
        offset += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & _UINT64_MASK, offset
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes")


def to_signed(value: int, bits: int) -> int:
    """Reinterpret an unsigned varint as a two's complement integer of ``bits`` bits."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def zigzag_encode(value: int) -> int:
    return (value << 1) ^ (value >> 63)


def zigzag_decode(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


def tag(field_number: int, wire_type: int) -> bytes:
    return encode_varint((field_number << 3) | wire_type)


def varint_field(field_number: int, value: int) -> bytes:
    return tag(field_number, VARINT) + encode_varint(value)


def len_field(field_number: int, payload: bytes) -> bytes:
    return tag(field_number, LEN) + encode_varint(len(payload)) + payload


def iter_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) for every field; value is an int or bytes.

    VARINT, I64 and I32 values come back as unsigned integers, LEN values as bytes.
    Raises ``WireError`` on truncation, field number 0, or group wire types.
    """
    offset = 0
    size = len(data)
    while offset < size:
        key, offset = decode_varint(data, offset)
        field_number, wire_type = key >> 3, key & 0x7
        if field_number == 0:
            raise WireError("field number 0 is not allowed")
        if wire_type == VARINT:
            value, offset = decode_varint(data, offset)
            yield field_number, wire_type, value
        elif wire_type == LEN:
            length, offset = decode_varint(data, offset)
            if offset + length > size:
                raise WireError(f"field {field_number} claims {length} bytes past the end")
            yield field_number, wire_type, data[offset : offset + length]
            offset += length
        elif wire_type == I64:
            if offset + 8 > size:
                raise WireError("truncated 64-bit field")
            yield field_number, wire_type, struct.unpack_from("<Q", data, offset)[0]
            offset += 8
        elif wire_type == I32:
            if offset + 4 > size:
                raise WireError("truncated 32-bit field")
            yield field_number, wire_type, struct.unpack_from("<I", data, offset)[0]
            offset += 4
        else:
            raise WireError(f"unsupported wire type {wire_type} for field {field_number}")

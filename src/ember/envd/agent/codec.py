"""Messages as plain dicts <-> binary protobuf and proto3 JSON, driven by ``schema``.

A message value is a ``dict`` keyed by proto field name (``exit_code``, not ``exitCode``):
strings are ``str``, bytes ``bytes``, integers and enums ``int``, nested messages ``dict``,
maps ``dict[str, str]``, repeated fields ``list``. A key that is absent means "not set";
readers use ``.get(name, default)``. Setting two members of one oneof is a caller bug: the
encoder writes both and a decoder keeps the last.

JSON follows the proto3 mapping that Connect clients produce and expect: lowerCamel keys
(the proto name is accepted on input too), bytes as base64, ``int64`` as a decimal string,
enums by name (numbers accepted on input), ``Timestamp`` as an RFC 3339 string, defaults
left out. Unknown fields are skipped in both codecs so newer clients keep working.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from typing import Any

from . import wire
from .schema import ENUMS, MESSAGES, TIMESTAMP, Field, Kind

Message = dict[str, Any]


class CodecError(ValueError):
    """A message cannot be decoded (or encoded) against its declared schema."""


_SIGNED_32 = {Kind.INT32, Kind.SINT32}
_INTEGERS = {Kind.UINT32, Kind.INT32, Kind.SINT32, Kind.INT64, Kind.ENUM}
_DEFAULTS: dict[Kind, object] = {
    Kind.STRING: "",
    Kind.BYTES: b"",
    Kind.BOOL: False,
    Kind.UINT32: 0,
    Kind.INT32: 0,
    Kind.SINT32: 0,
    Kind.INT64: 0,
    Kind.ENUM: 0,
}


def _fields(type_name: str) -> tuple[Field, ...]:
    try:
        return MESSAGES[type_name]
    except KeyError:
        raise CodecError(f"unknown message type {type_name}") from None


def encode(type_name: str, message: Message) -> bytes:
    """Binary protobuf for ``message``; raises ``CodecError`` on a value of the wrong type."""
    out = bytearray()
    for field in _fields(type_name):
        if field.name not in message:
            continue
        value = message[field.name]
        if field.kind is Kind.MAP:
            for key in sorted(value):
                entry = wire.len_field(1, str(key).encode()) + wire.len_field(2, str(value[key]).encode())
                out += wire.len_field(field.number, entry)
        elif field.repeated:
            for item in value:
                out += _encode_one(field, item)
        elif field.kind is Kind.MESSAGE or field.presence or value != _DEFAULTS[field.kind]:
            out += _encode_one(field, value)
    return bytes(out)


def _encode_one(field: Field, value: Any) -> bytes:
    try:
        if field.kind is Kind.MESSAGE:
            return wire.len_field(field.number, encode(field.type_name, value))
        if field.kind is Kind.STRING:
            return wire.len_field(field.number, value.encode())
        if field.kind is Kind.BYTES:
            return wire.len_field(field.number, bytes(value))
        if field.kind is Kind.SINT32:
            return wire.varint_field(field.number, wire.zigzag_encode(int(value)))
        return wire.varint_field(field.number, int(value))
    except (AttributeError, TypeError, ValueError) as exc:
        raise CodecError(f"field {field.name}: cannot encode {value!r} as {field.kind.value}") from exc


def decode(type_name: str, data: bytes) -> Message:
    """Parse binary protobuf; raises ``CodecError`` on malformed bytes or mismatched wire types."""
    by_number = {field.number: field for field in _fields(type_name)}
    message: Message = {}
    try:
        for number, wire_type, raw in wire.iter_fields(data):
            field = by_number.get(number)
            if field is None:
                continue
            expected = (
                wire.LEN if field.kind in (Kind.STRING, Kind.BYTES, Kind.MESSAGE, Kind.MAP) else wire.VARINT
            )
            if wire_type != expected:
                raise CodecError(f"field {field.name} has wire type {wire_type}, expected {expected}")
            value = _decode_one(field, raw)
            if field.kind is Kind.MAP:
                key, item = value
                message.setdefault(field.name, {})[key] = item
            elif field.repeated:
                message.setdefault(field.name, []).append(value)
            else:
                if field.oneof:
                    for other in by_number.values():
                        if other.oneof == field.oneof:
                            message.pop(other.name, None)
                message[field.name] = value
    except wire.WireError as exc:
        raise CodecError(f"malformed {type_name}: {exc}") from exc
    return message


def _decode_one(field: Field, raw: int | bytes) -> Any:
    if isinstance(raw, bytes):
        if field.kind is Kind.MESSAGE:
            return decode(field.type_name, raw)
        if field.kind is Kind.MAP:
            entry = {number: value for number, _, value in wire.iter_fields(raw)}
            return _utf8(field, entry.get(1, b"")), _utf8(field, entry.get(2, b""))
        return bytes(raw) if field.kind is Kind.BYTES else _utf8(field, raw)
    if field.kind is Kind.BOOL:
        return raw != 0
    if field.kind is Kind.SINT32:
        return wire.to_signed(wire.zigzag_decode(raw), 32)
    if field.kind in _SIGNED_32 or field.kind is Kind.ENUM:
        return wire.to_signed(raw, 32)
    if field.kind is Kind.INT64:
        return wire.to_signed(raw, 64)
    return raw & 0xFFFFFFFF


def _utf8(field: Field, raw: int | bytes) -> str:
    if not isinstance(raw, bytes):
        raise CodecError(f"field {field.name}: map entry is not length-delimited")
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise CodecError(f"field {field.name} is not valid UTF-8") from exc


def to_json(type_name: str, message: Message) -> Any:
    """The proto3 JSON value (a dict, or a string for ``Timestamp``) ready for ``json.dumps``."""
    if type_name == TIMESTAMP:
        return _timestamp_to_text(message)
    out: dict[str, Any] = {}
    for field in _fields(type_name):
        if field.name not in message:
            continue
        value = message[field.name]
        if field.kind is Kind.MAP:
            if value:
                out[field.json_name] = {str(k): str(v) for k, v in value.items()}
        elif field.repeated:
            if value:
                out[field.json_name] = [_scalar_to_json(field, item) for item in value]
        elif field.kind is Kind.MESSAGE or field.presence or value != _DEFAULTS[field.kind]:
            out[field.json_name] = _scalar_to_json(field, value)
    return out


def _scalar_to_json(field: Field, value: Any) -> Any:
    if field.kind is Kind.MESSAGE:
        return to_json(field.type_name, value)
    if field.kind is Kind.BYTES:
        return base64.b64encode(value).decode()
    if field.kind is Kind.INT64:
        return str(int(value))
    if field.kind is Kind.ENUM:
        return ENUMS[field.type_name].get(int(value), int(value))
    return value


def from_json(type_name: str, value: Any) -> Message:
    """Parse a proto3 JSON value; raises ``CodecError`` naming the offending field."""
    if type_name == TIMESTAMP:
        return _timestamp_from_text(value)
    if not isinstance(value, dict):
        raise CodecError(f"{type_name} must be a JSON object, got {type(value).__name__}")
    message: Message = {}
    for field in _fields(type_name):
        raw = value.get(field.json_name, value.get(field.name))
        if raw is None:
            continue
        if field.kind is Kind.MAP:
            if not isinstance(raw, dict):
                raise CodecError(f"field {field.json_name} must be a JSON object")
            message[field.name] = {str(k): _scalar_from_json(field, v) for k, v in raw.items()}
        elif field.repeated:
            if not isinstance(raw, list):
                raise CodecError(f"field {field.json_name} must be a JSON array")
            message[field.name] = [_scalar_from_json(field, item) for item in raw]
        else:
            message[field.name] = _scalar_from_json(field, raw)
    return message


def _scalar_from_json(field: Field, raw: Any) -> Any:
    kind = Kind.STRING if field.kind is Kind.MAP else field.kind
    if kind is Kind.MESSAGE:
        return from_json(field.type_name, raw)
    if kind is Kind.STRING and isinstance(raw, str):
        return raw
    if kind is Kind.BOOL and isinstance(raw, bool):
        return raw
    if kind is Kind.BYTES and isinstance(raw, str):
        padded = raw.replace("-", "+").replace("_", "/") + "=" * (-len(raw) % 4)
        try:
            return base64.b64decode(padded, validate=True)
        except binascii.Error as exc:
            raise CodecError(f"field {field.json_name} is not valid base64") from exc
    if kind is Kind.ENUM and isinstance(raw, str) and not raw.lstrip("-").isdigit():
        for number, name in ENUMS[field.type_name].items():
            if name == raw:
                return number
        raise CodecError(f"field {field.json_name}: unknown {field.type_name} value {raw!r}")
    if kind in _INTEGERS and not isinstance(raw, bool):
        try:
            number = int(raw) if isinstance(raw, int | str) else int(float(raw))
        except (TypeError, ValueError) as exc:
            raise CodecError(f"field {field.json_name} must be an integer, got {raw!r}") from exc
        if kind is Kind.UINT32 and not 0 <= number < (1 << 32):
            raise CodecError(f"field {field.json_name} is out of range for uint32: {number}")
        return number
    raise CodecError(f"field {field.json_name} must be a JSON {kind.value}, got {raw!r}")


_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$")


def parse_rfc3339(text: str) -> tuple[int, int]:
    """(seconds since the epoch, nanoseconds) for an RFC 3339 date-time; raises ``CodecError``."""
    match = _RFC3339.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise CodecError(f"{text!r} is not an RFC 3339 date-time (like 2024-01-02T03:04:05Z)")
    date, clock, fraction, zone = match.groups()
    offset = "+00:00" if zone in ("Z", "z") else zone
    try:
        moment = dt.datetime.fromisoformat(f"{date}T{clock}{offset}")
    except ValueError as exc:
        raise CodecError(f"{text!r} is not a valid date-time: {exc}") from exc
    return int(moment.timestamp()), int((fraction or "0").ljust(9, "0"))


def _timestamp_from_text(value: Any) -> Message:
    seconds, nanos = parse_rfc3339(value)
    return {"seconds": seconds, "nanos": nanos}


def _timestamp_to_text(message: Message) -> str:
    seconds = int(message.get("seconds", 0))
    nanos = int(message.get("nanos", 0))
    moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{moment}.{nanos:09d}Z" if nanos else f"{moment}Z"

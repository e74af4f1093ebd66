"""Connect framing: content types, timeouts, request envelopes and end-of-stream messages."""

from __future__ import annotations

import gzip
import io
import json
import time

import pytest

from ember.envd.agent import connect
from ember.envd.agent.connect import Code, Encoding, RpcError, Shape


def test_content_types_pick_the_codec_per_call_shape() -> None:
    assert connect.parse_content_type("application/json; charset=utf-8", Shape.UNARY) is Encoding.JSON
    assert connect.parse_content_type("application/proto", Shape.UNARY) is Encoding.PROTO
    assert connect.parse_content_type("application/connect+proto", Shape.SERVER_STREAM) is Encoding.PROTO
    with pytest.raises(RpcError, match="application/connect"):
        connect.parse_content_type("application/json", Shape.SERVER_STREAM)


def test_timeout_header_becomes_a_deadline() -> None:
    before = time.monotonic()
    deadline = connect.parse_timeout({"Connect-Timeout-Ms": "1500"})
    assert deadline is not None and before + 1.5 <= deadline <= time.monotonic() + 1.5
    assert connect.parse_timeout({}) is None
    with pytest.raises(RpcError) as caught:
        connect.parse_timeout({"Connect-Timeout-Ms": "12345678901"})
    assert caught.value.code is Code.INVALID_ARGUMENT


def test_expired_call_raises_deadline_exceeded() -> None:
    call = connect.Call({}, None, time.monotonic() - 1)
    assert call.remaining_s() == 0.0
    with pytest.raises(RpcError) as caught:
        call.check_deadline()
    assert caught.value.code is Code.DEADLINE_EXCEEDED


def _chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def test_envelopes_split_across_chunks_are_reassembled() -> None:
    stream = connect.envelope(b"first") + connect.envelope(b"second")
    body = _chunked(stream[:3], stream[3:12], stream[12:])
    payloads = list(connect.iter_envelopes(io.BytesIO(body), {"Transfer-Encoding": "chunked"}))
    assert payloads == [b"first", b"second"]


def test_compressed_envelopes_are_inflated() -> None:
    body = connect.envelope(gzip.compress(b"packed"), connect.FLAG_COMPRESSED)
    headers = {"Content-Length": str(len(body)), "Connect-Content-Encoding": "gzip"}
    assert list(connect.iter_envelopes(io.BytesIO(body), headers)) == [b"packed"]


def test_a_truncated_envelope_is_invalid_argument() -> None:
    body = connect.envelope(b"whole")[:-1]
    with pytest.raises(RpcError) as caught:
        list(connect.iter_envelopes(io.BytesIO(body), {"Content-Length": str(len(body))}))
    assert caught.value.code is Code.INVALID_ARGUMENT


def test_end_of_stream_carries_the_error_as_json() -> None:
    frame = connect.end_stream(RpcError(Code.NOT_FOUND, "gone"))
    assert frame[0] == connect.FLAG_END_STREAM
    assert json.loads(frame[5:]) == {"error": {"code": "not_found", "message": "gone"}}
    assert connect.end_stream(None)[5:] == b"{}"


def test_undecodable_payloads_are_invalid_argument() -> None:
    for encoding, payload in ((Encoding.JSON, b"[1"), (Encoding.PROTO, b"\xff")):
        with pytest.raises(RpcError) as caught:
            encoding.decode("filesystem.StatRequest", payload)
        assert caught.value.code is Code.INVALID_ARGUMENT

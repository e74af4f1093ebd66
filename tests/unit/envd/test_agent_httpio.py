"""HTTP/1.1 request bodies: Content-Length, chunked, content codings, and their failures."""

from __future__ import annotations

import gzip
import io

import pytest

from ember.envd.agent import httpio


def test_content_length_body_is_read_exactly() -> None:
    rfile = io.BytesIO(b"helloNEXT REQUEST")
    assert b"".join(httpio.iter_body(rfile, {"Content-Length": "5"}, block_size=2)) == b"hello"
    assert rfile.read() == b"NEXT REQUEST"


def test_chunked_body_with_extensions_and_trailers() -> None:
    rfile = io.BytesIO(b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\nNEXT")
    assert list(httpio.iter_body(rfile, {"Transfer-Encoding": "chunked"})) == [b"abc", b"de"]
    assert rfile.read() == b"NEXT"


@pytest.mark.parametrize(
    ("raw", "headers", "complaint"),
    [
        (b"abc", {"Content-Length": "5"}, "ended 2 bytes early"),
        (b"", {"Content-Length": "five"}, "not a number"),
        (b"zz\r\n", {"Transfer-Encoding": "chunked"}, "not hexadecimal"),
        (b"5\r\nab", {"Transfer-Encoding": "chunked"}, "inside a chunk"),
    ],
)
def test_malformed_bodies_are_refused(raw: bytes, headers: dict[str, str], complaint: str) -> None:
    with pytest.raises(httpio.BodyError, match=complaint):
        list(httpio.iter_body(io.BytesIO(raw), headers))


def test_gzip_content_encoding_is_undone() -> None:
    packed = gzip.compress(b"payload")
    headers = {"Content-Length": str(len(packed)), "Content-Encoding": "gzip"}
    assert httpio.read_body(io.BytesIO(packed), headers) == b"payload"
    with pytest.raises(httpio.BodyError, match="unsupported content encoding"):
        httpio.decompress(b"", "br")


def test_reply_chunks_frame_their_length_in_hex() -> None:
    assert httpio.chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        ("", ""),
        ("identity", ""),
        ("gzip", "gzip"),
        ("gzip, deflate, zstd", "gzip"),
        ("GZIP;q=0.5, identity;q=0.9", ""),
        ("identity;q=0.1, gzip;q=0.8", "gzip"),
        ("gzip;q=0", ""),
        ("br, zstd", ""),
        ("*", ""),
        ("*, identity;q=0", "gzip"),
        ("br, identity;q=0", None),
        ("gzip;q=bad", "gzip"),
    ],
)
def test_negotiate_encoding_picks_gzip_only_when_preferred(accept: str, coding: str | None) -> None:
    assert httpio.negotiate_encoding(accept) == coding

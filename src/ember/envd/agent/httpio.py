"""HTTP/1.1 message bodies on a raw socket file: Content-Length, chunked, streamed replies.

``http.server`` parses request lines and headers but leaves bodies to the handler. A
request body arrives either with ``Content-Length`` or as ``Transfer-Encoding: chunked``
(what streaming clients such as hyper send)::

    chunk    = hex-size [; extensions] CRLF  data  CRLF
    last     = "0" CRLF  [trailer fields CRLF]*  CRLF

Streamed replies are written the same way, one chunk per message, so every message
reaches the client as soon as it is produced.

Downloads honour ``Accept-Encoding`` as E2B's envd does (``negotiate_encoding``): gzip
when the client lists it (by quality order) before identity, identity otherwise; only a
client refusing identity (``identity;q=0``) without accepting gzip gets nothing.
"""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Iterator, Mapping
from io import BufferedIOBase

MAX_BODY_BYTES = 1 << 30
_MAX_CHUNK_LINE = 1024


class BodyError(ValueError):
    """The request body is malformed, too large, or encoded in an unsupported way."""


def iter_body(
    rfile: BufferedIOBase, headers: Mapping[str, str], block_size: int = 1 << 16
) -> Iterator[bytes]:
    """Yield the request body in pieces as they arrive; nothing is read past its end."""
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        yield from _iter_chunked(rfile)
        return
    try:
        remaining = int(headers.get("Content-Length", "0") or "0")
    except ValueError as exc:
        raise BodyError(f"Content-Length is not a number: {headers.get('Content-Length')!r}") from exc
    if remaining < 0 or remaining > MAX_BODY_BYTES:
        raise BodyError(f"Content-Length {remaining} is outside 0..{MAX_BODY_BYTES}")
    while remaining:
        piece = rfile.read(min(block_size, remaining))
        if not piece:
            raise BodyError(f"request body ended {remaining} bytes early")
        remaining -= len(piece)
        yield piece


def _iter_chunked(rfile: BufferedIOBase) -> Iterator[bytes]:
    total = 0
    while True:
        line = rfile.readline(_MAX_CHUNK_LINE)
        if not line.endswith(b"\n"):
            raise BodyError("chunk size line is missing or too long")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise BodyError(f"chunk size {line!r} is not hexadecimal") from exc
        if size == 0:
            while rfile.readline(_MAX_CHUNK_LINE) not in (b"\r\n", b"\n", b""):
                pass
            return
        total += size
        if total > MAX_BODY_BYTES:
            raise BodyError(f"chunked body is larger than {MAX_BODY_BYTES} bytes")
        data = rfile.read(size)
        if len(data) != size:
            raise BodyError("chunked body ended inside a chunk")
        rfile.readline(_MAX_CHUNK_LINE)
        yield data


def read_body(rfile: BufferedIOBase, headers: Mapping[str, str]) -> bytes:
    """The whole request body, decompressed when ``Content-Encoding`` is gzip."""
    body = b"".join(iter_body(rfile, headers))
    return decompress(body, headers.get("Content-Encoding", ""))


def decompress(data: bytes, encoding: str) -> bytes:
    """Undo a ``gzip``/``deflate`` content coding; ``identity`` or empty returns ``data``."""
    encoding = encoding.strip().lower()
    try:
        if encoding in ("", "identity"):
            return data
        if encoding == "gzip":
            return gzip.decompress(data)
        if encoding == "deflate":
            return zlib.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise BodyError(f"body is not valid {encoding}: {exc}") from exc
    raise BodyError(f"unsupported content encoding {encoding!r}: send gzip or identity")


def negotiate_encoding(accept_encoding: str) -> str | None:
    """The coding of a reply: ``"gzip"``, ``""`` (identity), or None when no coding is acceptable."""
    offers: list[tuple[str, float]] = []
    for item in accept_encoding.split(","):
        name, _, parameters = item.partition(";")
        quality = 1.0
        for parameter in parameters.split(";"):
            key, _, value = parameter.strip().partition("=")
            if key.lower() == "q":
                with contextlib.suppress(ValueError):
                    quality = float(value)
        if name.strip():
            offers.append((name.strip().lower(), quality))
    offers.sort(key=lambda offer: -offer[1])
    identity_refused = ("identity", 0.0) in offers
    for name, quality in offers:
        if quality <= 0:
            continue
        if name == "identity":
            return ""
        if name == "*":
            return "gzip" if identity_refused else ""
        if name == "gzip":
            return "gzip"
    return None if identity_refused else ""


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked reply (empty ``data`` would end the reply, so callers never pass it)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"

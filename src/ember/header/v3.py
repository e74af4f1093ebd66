"""Header versions 1, 2 and 3: the metadata prefix followed by mapping records until EOF.

::

    [64-byte metadata prefix][N x 40-byte mapping record]      (no count; N = body / 40)

A trailing partial record is an error; N = 0 stands for the default single mapping. These
versions carry no per-build data, so ``Header.builds`` is None after reading and ignored on write.
"""

from __future__ import annotations

from ember.errors import HeaderError
from ember.header.header import Header
from ember.header.layout import PREFIX_BYTES, RECORD_BYTES, pack_prefix, pack_records, unpack_records
from ember.header.model import Metadata


def serialize_v3(header: Header) -> bytes:
    return pack_prefix(header.metadata) + pack_records(header.mappings)


def deserialize_v3(metadata: Metadata, data: bytes | memoryview) -> Header:
    body = memoryview(data)[PREFIX_BYTES:]
    count, partial = divmod(len(body), RECORD_BYTES)
    if partial:
        raise HeaderError(
            f"truncated mapping record: the {len(body)}-byte body is not a multiple of {RECORD_BYTES} bytes "
            f"({partial} trailing bytes); the header object is incomplete, re-fetch or re-upload it"
        )
    return Header(metadata, unpack_records(body, count))

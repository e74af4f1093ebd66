"""Header bytes <-> ``Header``, dispatching on the format version (``version & 0xFFFF``).

Every version starts with the 64-byte metadata prefix (``layout``); what follows is described
in ``v3`` (versions 1-3), ``v4`` and ``v5``. The uncompressed-block cap applies to V4/V5 only and
can be raised on both sides when a deployment needs bigger headers.
"""

from __future__ import annotations

from ember.errors import HeaderError
from ember.header.header import Header
from ember.header.layout import unpack_prefix
from ember.header.v3 import deserialize_v3, serialize_v3
from ember.header.v4 import MAX_UNCOMPRESSED_HEADER_BYTES, deserialize_v4, serialize_v4
from ember.header.v5 import deserialize_v5, serialize_v5

LEGACY_VERSIONS = frozenset({1, 2, 3})


def _unsupported(version: int) -> HeaderError:
    return HeaderError(
        f"unsupported header version {version}: ember reads and writes versions 1-5; "
        "the header is corrupt or comes from a newer producer"
    )


def serialize_header(header: Header, *, max_uncompressed_bytes: int = MAX_UNCOMPRESSED_HEADER_BYTES) -> bytes:
    """Encode ``header`` in the layout its ``metadata.version`` names."""
    version = header.metadata.format_version
    if version in LEGACY_VERSIONS:
        return serialize_v3(header)
    if version == 4:
        return serialize_v4(header, max_uncompressed_bytes)
    if version == 5:
        return serialize_v5(header, max_uncompressed_bytes)
    raise _unsupported(version)


def deserialize_header(data: bytes, *, max_uncompressed_bytes: int = MAX_UNCOMPRESSED_HEADER_BYTES) -> Header:
    """Decode header bytes of any supported version; raises HeaderError or MappingError if corrupt."""
    metadata = unpack_prefix(data)
    version = metadata.format_version
    if version in LEGACY_VERSIONS:
        return deserialize_v3(metadata, data)
    if version == 4:
        return deserialize_v4(metadata, data, max_uncompressed_bytes)
    if version == 5:
        return deserialize_v5(metadata, data, max_uncompressed_bytes)
    raise _unsupported(version)

"""The uncompressed kernel ELF inside an x86 bzImage (what Firecracker boots as vmlinux.bin).

Where the compressed kernel sits (boot protocol >= 2.08, all little-endian)::

    offset 0x1f1  u8   setup_sects        real-mode setup is (setup_sects + 1) * 512 bytes
    offset 0x202  4 B  "HdrS"             boot protocol magic
    offset 0x248  u32  payload_offset     from the end of the setup code
    offset 0x24c  u32  payload_length
    payload: compressed vmlinux, format told by its magic; a u32 uncompressed size follows

Debian's -cloud flavour uses LZ4 in the kernel's *legacy* frame format, which the lz4
library's frame API does not read::

    02 21 4c 18                 magic
    { u32 block_size, block }   LZ4 blocks, each inflating to at most 8 MiB
    u32 total_size              appended by the kernel build (a "block size" past the end)

The generic flavour uses XZ; gzip and zstd are handled too.
"""

from __future__ import annotations

import gzip
import lzma
import struct

import lz4.block
import zstandard

from ember.errors import GuestError

_LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
_LZ4_LEGACY_BLOCK_BYTES = 8 << 20
_ELF_MAGIC = b"\x7fELF"


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF image compressed inside ``bzimage``; raises GuestError on anything else."""
    if bzimage[:4] == _ELF_MAGIC:
        return bzimage
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        raise GuestError("not a bzImage (no HdrS boot header): pass a Linux x86 kernel image")
    setup_bytes = (bzimage[0x1F1] + 1) * 512
    payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
    start = setup_bytes + payload_offset
    payload = bzimage[start : start + payload_length]
    elf = _decompress(payload)
    if elf[:4] != _ELF_MAGIC:
        raise GuestError("the bzImage payload did not inflate to an ELF image: unsupported kernel format")
    return elf


def _decompress(payload: bytes) -> bytes:
    try:
        if payload.startswith(_LZ4_LEGACY_MAGIC):
            return _lz4_legacy(payload)
        if payload.startswith(b"\xfd7zXZ\x00"):
            return lzma.LZMADecompressor().decompress(payload)
        if payload.startswith(b"\x1f\x8b"):
            return gzip.decompress(payload[:-4] if len(payload) > 4 else payload)
        if payload.startswith(b"\x28\xb5\x2f\xfd"):
            return zstandard.ZstdDecompressor().decompressobj().decompress(payload)
    except (lzma.LZMAError, OSError, EOFError, zstandard.ZstdError, lz4.block.LZ4BlockError) as exc:
        raise GuestError(f"the bzImage payload is corrupt: {exc}") from exc
    raise GuestError(f"unknown kernel compression (payload starts {payload[:6].hex()}): use a Debian kernel")


def _lz4_legacy(payload: bytes) -> bytes:
    parts: list[bytes] = []
    position = len(_LZ4_LEGACY_MAGIC)
    while position + 4 <= len(payload):
        (block_bytes,) = struct.unpack_from("<I", payload, position)
        if payload[position : position + 4] == _LZ4_LEGACY_MAGIC:
            position += 4
            continue
        if position + 4 + block_bytes > len(payload):
            break
        block = payload[position + 4 : position + 4 + block_bytes]
        parts.append(lz4.block.decompress(block, uncompressed_size=_LZ4_LEGACY_BLOCK_BYTES))
        position += 4 + block_bytes
    return b"".join(parts)

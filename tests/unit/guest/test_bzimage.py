from __future__ import annotations

import lzma
import struct

import lz4.block
import pytest

from ember.errors import EmberError
from ember.guest import extract_vmlinux

ELF = b"\x7fELF" + bytes(range(256)) * 300


def _bzimage(payload: bytes, setup_sects: int = 3, payload_offset: int = 40) -> bytes:
    image = bytearray((setup_sects + 1) * 512 + payload_offset)
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", image, 0x248, payload_offset, len(payload))
    return bytes(image) + payload + b"\0" * 16


def _lz4_legacy(data: bytes, block_bytes: int) -> bytes:
    out = b"\x02\x21\x4c\x18"
    for start in range(0, len(data), block_bytes):
        block = lz4.block.compress(data[start : start + block_bytes], store_size=False)
        out += struct.pack("<I", len(block)) + block
    return out + struct.pack("<I", len(data))


def test_debian_cloud_lz4_legacy_payload_inflates_to_the_elf() -> None:
    assert extract_vmlinux(_bzimage(_lz4_legacy(ELF, block_bytes=10_000))) == ELF


def test_xz_payload_inflates_to_the_elf() -> None:
    payload = lzma.compress(ELF, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    assert extract_vmlinux(_bzimage(payload)) == ELF


def test_an_elf_is_returned_unchanged() -> None:
    assert extract_vmlinux(ELF) == ELF


def test_a_file_that_is_not_a_kernel_is_refused() -> None:
    with pytest.raises(EmberError, match="not a bzImage"):
        extract_vmlinux(b"MZ" + bytes(4096))


def test_an_unknown_compression_is_named() -> None:
    with pytest.raises(EmberError, match="unknown kernel compression"):
        extract_vmlinux(_bzimage(b"\x42\x5a\x68" + bytes(64)))

"""Base devices for the overlay tests (a helper module, not a test file)."""

from __future__ import annotations

import random
from pathlib import Path

from ember.block import CowCache, Overlay

BLOCK = 4096


class BytesDevice:
    """A read-only base device over an in-memory image; counts the bytes read from it."""

    def __init__(self, image: bytes) -> None:
        self.image = image
        self.bytes_read = 0

    @property
    def size(self) -> int:
        return len(self.image)

    def readinto(self, buffer: bytearray | memoryview, offset: int) -> int:
        view = memoryview(buffer).cast("B")
        piece = self.image[offset : offset + len(view)]
        view[: len(piece)] = piece
        self.bytes_read += len(piece)
        return len(piece)


def random_image(blocks: int, seed: int) -> bytes:
    """An image whose every block is non-zero, so zeroed blocks stand out."""
    return random.Random(seed).randbytes(blocks * BLOCK).replace(b"\x00", b"\x01")


def open_overlay(directory: Path, base: BytesDevice) -> Overlay:
    return Overlay(base, CowCache.create(directory, "rootfs-test", base.size))

"""A file-backed Disk for the integration tests, and the host facts they skip on."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

BLOCK = 4096


class FileDisk:
    """A raw file as a Disk (pread / pwrite)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR)
        self.size = os.fstat(self._fd).st_size
        self.block_size = BLOCK

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def write_at(self, data: bytes, offset: int) -> None:
        os.pwrite(self._fd, data, offset)

    def write_zeroes_at(self, offset: int, length: int) -> None:
        os.pwrite(self._fd, bytes(length), offset)

    def flush(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def need(*tools: str) -> None:
    """Skip the test, naming the tool, when one is not installed."""
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: libnbd-bin / qemu-utils / fuse3 / mount)")


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout

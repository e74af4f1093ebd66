"""A build's root filesystem as a private, writable disk: overlay, NBD server, and host mounts.

A sandbox never writes into a build. Its disk is an ``Overlay`` whose base reads the build
through the header chain and whose writes land in a copy-on-write cache file; the disk is
served over NBD (QEMU connects to the URL; on the host it is attached as a block device).
When the sandbox pauses, the overlay becomes the next build's rootfs diff; otherwise the
cache is deleted and every write is gone.

Everything this module starts is undone by ``close``/``__exit__`` in reverse order, also
after a failure part way, so a Ctrl+C never leaves a server, loop device or mount behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ember.block import BaseDevice, CowCache, Overlay, ZeroDevice, export_rootfs_build
from ember.build.metadata import TemplateMetadata
from ember.errors import BuildError, EmberError, UsageError
from ember.header import ROOTFS_BLOCK_SIZE, Header, empty_device_header
from ember.nbd import AttachedDevice, NbdServerThread, attach_export
from ember.nbd.server import DISK_THREADS
from ember.storage import Storage

_log = logging.getLogger(__name__)


class WatchedDisk:
    """The overlay as the NBD server sees it, keeping the first write that failed.

    A guest whose disk writes fail (the host's disk is full) sees I/O errors and its ext4
    aborts its journal; nothing on the host would notice. The sandbox checks ``failure``
    after a command and before a pause, and reports it as the reason.
    """

    def __init__(self, overlay: Overlay) -> None:
        self._overlay = overlay
        self.failure: str | None = None
        self.failures = 0

    @property
    def size(self) -> int:
        return self._overlay.size

    @property
    def block_size(self) -> int:
        return self._overlay.block_size

    def read_at(self, offset: int, length: int) -> bytes:
        return self._overlay.read_at(offset, length)

    def write_at(self, data: bytes, offset: int) -> None:
        self._watch(lambda: self._overlay.write_at(data, offset), f"writing {len(data)} bytes at {offset}")

    def write_zeroes_at(self, offset: int, length: int) -> None:
        self._watch(
            lambda: self._overlay.write_zeroes_at(offset, length), f"zeroing {length} bytes at {offset}"
        )

    def flush(self) -> None:
        self._watch(self._overlay.flush, "flushing")

    def _watch(self, write: Callable[[], None], what: str) -> None:
        try:
            write()
        except (EmberError, OSError) as exc:
            self.failures += 1
            if self.failure is None:
                self.failure = f"{what} of the sandbox's disk failed: {exc}"
                # Not an error line: ``raise_if_failed`` makes it the sandbox's failure, which
                # its owner reports once (a full disk must not print the same cause twice).
                _log.info("%s", self.failure)
            raise


class ServedRootfs:
    """An overlay over ``base`` served on a unix socket; a context manager.

    ``socket_dir`` holds the socket (default: a private directory under $TMPDIR, removed on
    close); ``disk_threads`` is how many reads the server runs at once.
    """

    def __init__(
        self,
        base: BaseDevice,
        work_dir: Path,
        name: str,
        block_size: int,
        *,
        socket_dir: Path | None = None,
        disk_threads: int = DISK_THREADS,
    ) -> None:
        self._stack = contextlib.ExitStack()
        try:
            self.cache = CowCache.create(work_dir, name, base.size, block_size)
            self.overlay = self._stack.enter_context(Overlay(base, self.cache))
            self.disk = WatchedDisk(self.overlay)
            if socket_dir is None:
                # unix socket paths are capped at 108 bytes and work_dir may be deep, so the socket
                # lives in a private directory under $TMPDIR, as the original keeps its sockets.
                socket_dir = Path(tempfile.mkdtemp(prefix="ember-nbd-"))
                self._stack.callback(shutil.rmtree, socket_dir, True)
            socket_path = socket_dir / f"rootfs-{secrets.token_hex(4)}.sock"
            self._stack.callback(socket_path.unlink, True)
            self.server = self._stack.enter_context(
                NbdServerThread(self.disk, unix_path=socket_path, disk_threads=disk_threads)
            )
        except BaseException:
            self._stack.close()
            raise

    @property
    def url(self) -> str:
        return self.server.url

    def raise_if_failed(self) -> None:
        """Raise ``BuildError`` if a write of the guest's disk failed (its file system is damaged)."""
        if self.disk.failure is not None:
            raise BuildError(
                f"{self.disk.failure} ({self.disk.failures} failed writes); the guest's file system "
                f"is damaged: free space under {self.cache.path.parent} and start the sandbox again"
            )

    def attach(self, work_dir: Path) -> AttachedDevice:
        """Attach the export as a host block device (detached again by ``close``)."""
        return self._stack.enter_context(attach_export(self.server, work_dir=work_dir))

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> ServedRootfs:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True)
class CheckResult:
    """What a filesystem check found; ``output`` is the tool's own report for the user."""

    ok: bool
    output: str


def _run(argv: list[str], package: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        raise EmberError(f"{argv[0]} is not installed: install the Debian package {package}")
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def check_ext4(device: Path) -> CheckResult:
    """``e2fsck -nfv``: a forced, read-only check (exit 0 means clean)."""
    result = _run(["e2fsck", "-nfv", str(device)], "e2fsprogs")
    return CheckResult(result.returncode == 0, (result.stdout + result.stderr).strip())


def verify_journals(mount_dir: Path) -> list[tuple[Path, CheckResult]]:
    """``journalctl --verify`` on each systemd journal directory under the mounted root."""
    results = []
    for directory in sorted((mount_dir / "var" / "log" / "journal").glob("*")):
        if directory.is_dir():
            result = _run(["journalctl", "--verify", "--directory", str(directory)], "systemd")
            results.append(
                (directory, CheckResult(result.returncode == 0, (result.stdout + result.stderr).strip()))
            )
    return results


@contextlib.contextmanager
def mounted(device: Path, mount_dir: Path) -> Iterator[Path]:
    """Mount ``device`` at ``mount_dir`` for the duration of the block; unmount on the way out."""
    if os.geteuid() != 0:
        raise UsageError("mounting needs root: run the command with sudo")
    result = _run(["mount", str(device), str(mount_dir)], "mount")
    if result.returncode != 0:
        raise EmberError(f"cannot mount {device} at {mount_dir}: {result.stderr.strip()}")
    try:
        yield mount_dir
    finally:
        unmounted = _run(["umount", str(mount_dir)], "mount")
        if unmounted.returncode != 0:
            _log.warning("umount %s failed (%s); retrying lazily", mount_dir, unmounted.stderr.strip())
            _run(["umount", "-l", str(mount_dir)], "mount")


IMAGE_COPY_CHUNK = 4 << 20


def store_image_build(
    image: Path, storage: Storage, build_id: uuid.UUID, metadata: TemplateMetadata, scratch_dir: Path
) -> Header:
    """Store a root filesystem image as the first layer of a new build chain (generation 1).

    Every non-zero block becomes the build's own data and every zero block an empty
    mapping, as a template's base layer is stored; the image itself is only read.
    """
    size = image.stat().st_size
    if size % ROOTFS_BLOCK_SIZE:
        raise UsageError(f"{image} is {size} bytes, not a multiple of {ROOTFS_BLOCK_SIZE}: resize the image")
    with Overlay(ZeroDevice(size), CowCache.create(scratch_dir, f"{build_id}-image", size)) as overlay:
        with image.open("rb") as source:
            for offset in range(0, size, IMAGE_COPY_CHUNK):
                overlay.write_at(source.read(IMAGE_COPY_CHUNK), offset)
        parent = empty_device_header(build_id, size, ROOTFS_BLOCK_SIZE)
        return export_rootfs_build(overlay, parent, storage, build_id, metadata, scratch_dir)

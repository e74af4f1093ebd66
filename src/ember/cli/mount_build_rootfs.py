"""``ember mount-build-rootfs``: expose a build's rootfs as a block device, optionally mounted.

Writes go to a private copy-on-write cache and are discarded on exit; the build is never
modified. Ctrl+C and SIGTERM unmount, detach and stop everything this command started.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from ember.block import BaseDevice, ZeroDevice
from ember.build import BuildFile
from ember.cli.flags import FlagParser, build_id, non_negative
from ember.cli.render import storage_flag
from ember.environment import Environment
from ember.errors import BuildError, UsageError
from ember.sandbox.rootfs import ServedRootfs, check_ext4, mounted, verify_journals
from ember.storage import ROOTFS, ChunkCache, LocalStorage, Storage, open_storage

SUMMARY = "expose a build's rootfs as a block device (writes discarded), optionally mounted"

DEFAULT_EMPTY_SIZE = 1 << 30


def build_parser() -> FlagParser:
    parser = FlagParser("ember mount-build-rootfs", SUMMARY)
    parser.add_flag("build", help="build ID (UUID, required unless -empty)", metavar="<uuid>", type=build_id)
    storage_flag(parser)
    parser.add_flag("mount", help="mount the rootfs at this path", metavar="<path>")
    parser.add_bool(
        "verify", help="verify rootfs integrity with e2fsck and journalctl, then exit (needs -mount)"
    )
    parser.add_bool("log", help="log what the device and server do to stderr")
    parser.add_bool("empty", help="expose an empty (all-zero) rootfs instead of a build")
    parser.add_flag(
        "size",
        help="size of the empty rootfs in bytes (default 1GB)",
        metavar="<bytes>",
        type=non_negative,
        default=DEFAULT_EMPTY_SIZE,
    )
    parser.add_flag(
        "block-size",
        help="block size of the empty rootfs (default 4096)",
        metavar="<bytes>",
        type=non_negative,
        default=4096,
    )
    return parser


def _base(options: argparse.Namespace) -> tuple[BaseDevice, str, int]:
    if options.empty:
        if options.block_size <= 0 or options.size <= 0 or options.size % options.block_size:
            raise UsageError(
                f"-size {options.size} must be a positive multiple of -block-size {options.block_size}"
            )
        return ZeroDevice(options.size), "rootfs.ext4.cow.cache", options.block_size
    if not options.build:
        raise UsageError("-build is required unless -empty is given")
    storage: Storage = open_storage(options.storage)
    if not isinstance(storage, LocalStorage):
        cache_root = Environment.resolve(options.storage).snapshot_cache_dir
        cache_root.mkdir(parents=True, exist_ok=True)
        storage = ChunkCache(storage, cache_root)
    device = BuildFile.open(storage, options.build, ROOTFS)
    return device, f"{options.build}-rootfs.ext4.cow.cache", device.block_size


def run(options: argparse.Namespace) -> int:
    if options.verify and not options.mount:
        raise UsageError("-verify needs -mount: the journals are checked on the mounted rootfs")
    if os.geteuid() != 0:
        raise UsageError("mount-build-rootfs needs root to attach and mount devices: run it with sudo")
    if options.log:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    base, cache_name, block_size = _base(options)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, _setter(stop)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with tempfile.TemporaryDirectory(prefix="ember-mount-") as scratch:
            work_dir = Path(scratch)
            with ServedRootfs(base, work_dir, cache_name, block_size) as rootfs:
                print(f"caching writes to: {rootfs.cache.path}")
                device = rootfs.attach(work_dir)
                print(f"rootfs exposed as device: {device.path}")
                if options.verify:
                    return _verify(device.path, Path(options.mount))
                if options.mount:
                    return _serve_mounted(device.path, Path(options.mount), stop)
                _wait(stop)
                return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _setter(stop: threading.Event) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    return handler


def _wait(stop: threading.Event) -> None:
    while not stop.wait(0.5):
        pass
    print("closing rootfs mount")


def _prepare_mount_dir(mount_dir: Path) -> None:
    if not mount_dir.exists():
        print(f"creating mount path directory: {mount_dir}")
        mount_dir.mkdir(parents=True)


def _serve_mounted(device: Path, mount_dir: Path, stop: threading.Event) -> int:
    _prepare_mount_dir(mount_dir)
    with mounted(device, mount_dir):
        print(f"rootfs mounted at path: {mount_dir}")
        _wait(stop)
    return 0


def _verify(device: Path, mount_dir: Path) -> int:
    """e2fsck before mounting (a check of a mounted filesystem is unreliable), then the journals."""
    check = check_ext4(device)
    print(check.output)
    if not check.ok:
        raise BuildError(f"e2fsck found problems in the rootfs on {device}: see its report above")
    print("rootfs integrity verified")
    _prepare_mount_dir(mount_dir)
    with mounted(device, mount_dir):
        print(f"rootfs mounted at path: {mount_dir}")
        failures = [path for path, result in verify_journals(mount_dir) if not result.ok]
    if failures:
        raise BuildError(f"journal verification failed for {', '.join(map(str, failures))}")
    print("journal files verified")
    return 0

"""ext4 root filesystem images, made the way the seed's template builder makes them.

The seed runs ``mkfs.ext4 -b 4096 -m 0 -i <ratio> -O <EXT4_FEATURES> -d <dir>`` (facts
file 5.9); e2fsprogs 1.47 accepts that feature list as is, and adds its own defaults
(``has_journal``, ``metadata_csum``, ``sparse_super``, ``resize_inode``). No ``64bit``
keeps the group descriptors at 32 bytes and no ``dir_index`` keeps directories linear, as
the seed's images are.

``busybox_rootfs`` makes the smallest root a Debian kernel can switch to: busybox-static
with applet symlinks in /bin and an /sbin/init script supplied by the caller (tests, demo).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ember.errors import GuestError, UsageError
from ember.guest.cache import discard, publish
from ember.guest.initramfs import DEFAULT_BUSYBOX, busybox_applets

ROOTFS_BLOCK_SIZE = 4096
EXT4_FEATURES = (
    "^64bit",
    "^dir_index",
    "^dir_nlink",
    "ext_attr",
    "extent",
    "extra_isize",
    "filetype",
    "flex_bg",
    "huge_file",
    "inline_data",
    "large_file",
    "sparse_super2",
)
_ROOT_DIRS = ("bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "root", "run", "var")


def make_ext4(
    image: Path, size_mb: int, source_dir: Path | None = None, *, inode_ratio: int | None = None
) -> Path:
    """Create ``image`` (``size_mb`` MiB, sparse) holding a copy of ``source_dir``.

    The image appears whole or not at all. Raises UsageError when the size is not
    positive and GuestError when mkfs.ext4 fails (too small for the content, most often).
    """
    if size_mb <= 0:
        raise UsageError(f"rootfs size must be a positive number of MiB, got {size_mb}")
    image.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{image.name}.", dir=image.parent)
    temporary = Path(temp_name)
    try:
        os.ftruncate(fd, size_mb << 20)
        os.close(fd)
        argv = ["mkfs.ext4", "-q", "-F", "-b", str(ROOTFS_BLOCK_SIZE), "-m", "0"]
        argv += ["-O", ",".join(EXT4_FEATURES)]
        if inode_ratio is not None:
            argv += ["-i", str(inode_ratio)]
        if source_dir is not None:
            argv += ["-d", str(source_dir)]
        _run_mkfs([*argv, str(temporary)], size_mb)
        temporary.chmod(0o644)
        return publish(temporary, image)
    except BaseException:
        discard(temporary)
        raise


def busybox_rootfs(directory: Path, init_script: str, *, busybox: Path = DEFAULT_BUSYBOX) -> Path:
    """Fill ``directory`` with busybox, applet links and ``/sbin/init`` = ``init_script``.

    ``init_script`` runs as PID 1 with PATH unset: start it with ``#!/bin/sh`` and set
    PATH=/bin. It must end the VM itself (``poweroff -f``), or the guest idles forever.
    """
    for name in _ROOT_DIRS:
        (directory / name).mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(busybox, directory / "bin" / "busybox")
    except OSError as exc:
        raise GuestError(f"cannot copy {busybox}: {exc}; install busybox-static") from exc
    (directory / "bin" / "busybox").chmod(0o755)
    for applet in busybox_applets(busybox):
        link = directory / "bin" / applet
        if applet != "busybox" and not link.is_symlink():
            link.symlink_to("busybox")
    init = directory / "sbin" / "init"
    init.write_text(init_script)
    init.chmod(0o755)
    return directory


def _run_mkfs(argv: list[str], size_mb: int) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise GuestError("mkfs.ext4 is not installed: install e2fsprogs (scripts/setup.sh)") from exc
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()
        raise GuestError(
            f"mkfs.ext4 failed ({detail[-1] if detail else f'exit {done.returncode}'}): "
            f"check that {size_mb} MiB holds the source directory"
        )

"""Turning a template root filesystem into a guest's ext4 boot image.

A template image is a root filesystem plus what ember puts into every guest::

    /usr/bin/envd          the agent (a python3 zipapp), mode 755
    /sbin/ember-init       PID 1 (ember.guest.guest_init), mode 755; boot with init=/sbin/ember-init
    /etc/hostname          the guest's hostname
    /etc/hosts             localhost and the hostname
    /etc/resolv.conf       the nameservers
    /etc/ember/env         ``export KEY='value'`` lines for envd, only when start_env is given

The root comes from a directory, a ``.tar`` / ``.tar.gz`` of a root filesystem, or the
default Debian root (ember.guest.default_template, cached on the host).

Injected files are written inside a staging copy (hard links when on the same file
system, so staging costs no copy) and only ever by replacing a directory entry, never by
writing through it: the cached root and the caller's directory stay untouched. Paths are
resolved as the guest would see them (an absolute symlink in the root points into the
root, not the host).
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from ember.errors import GuestError, UsageError
from ember.guest.cache import discard
from ember.guest.guest_init import ENVD_ENV_PATH, ENVD_PATH, GUEST_INIT_PATH, GUEST_INIT_SCRIPT
from ember.guest.rootfs import ROOTFS_BLOCK_SIZE, make_ext4

DEFAULT_HOSTNAME = "ember"
DEFAULT_NAMESERVERS = ("8.8.8.8",)
_MOUNT_POINTS = {"proc": 0o555, "sys": 0o555, "dev": 0o755, "run": 0o755, "tmp": 0o1777}
_SYMLINK_HOPS = 40
_INLINE_DATA_BYTES = 60
_INODE_RATIO_BYTES = 16384
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def rootfs_from_tar(tar_path: Path, dest: Path) -> Path:
    """Unpack a root filesystem archive (``.tar``, ``.tar.gz``, ...) into ``dest``.

    Ownership, modes, device nodes and extended attributes are kept (run as root); GNU tar
    strips leading ``/`` and refuses members that would land outside ``dest``.
    """
    if not tar_path.is_file():
        raise GuestError(
            f"template archive {tar_path} does not exist: pass a .tar or .tar.gz of a root filesystem"
        )
    dest.mkdir(parents=True, exist_ok=True)
    argv = ["tar", "-x", "-p", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-f", str(tar_path)]
    try:
        done = subprocess.run([*argv, "-C", str(dest)], capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise GuestError("tar is not installed: install the Debian package tar") from exc
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        detail = lines[0] if lines else f"tar exited {done.returncode}"
        raise GuestError(
            f"cannot unpack template archive {tar_path}: {detail}; "
            "pass a readable .tar or .tar.gz of a root filesystem"
        )
    return dest


def assemble_template_image(
    rootfs: Path,
    image_path: Path,
    disk_mb: int,
    envd_path: Path,
    start_env: Mapping[str, str] | None = None,
    *,
    hostname: str = DEFAULT_HOSTNAME,
    nameservers: Sequence[str] = DEFAULT_NAMESERVERS,
) -> Path:
    """Make the ext4 boot image ``image_path`` (``disk_mb`` MiB) from ``rootfs`` plus ember's files.

    ``rootfs`` is a directory or a root filesystem archive; it is not modified.
    ``start_env`` is exported to envd (and so to what it starts). The image appears
    whole or not at all; when ``disk_mb`` is too small the GuestError says how many MiB
    the content needs.
    """
    env_text = _env_file(start_env) if start_env else None
    try:
        envd = envd_path.read_bytes()
    except OSError as exc:
        raise GuestError(f"cannot read the agent {envd_path}: {exc}; build it first (ember.envd)") from exc
    image_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{image_path.name}.", dir=image_path.parent))
    try:
        root = staging / "root"
        if rootfs.is_dir():
            _stage_directory(rootfs, root)
        else:
            rootfs_from_tar(rootfs, root)
        for name, mode in _MOUNT_POINTS.items():
            mount_point = _path_in_root(root, name)
            if not mount_point.exists() and not mount_point.is_symlink():
                mount_point.mkdir()
                mount_point.chmod(mode)
        _install(root, ENVD_PATH, envd, 0o755)
        _install(root, GUEST_INIT_PATH, GUEST_INIT_SCRIPT.encode(), 0o755)
        _install(root, "/etc/hostname", f"{hostname}\n".encode(), 0o644)
        _install(root, "/etc/hosts", _hosts(hostname).encode(), 0o644)
        resolv_conf = "".join(f"nameserver {address}\n" for address in nameservers)
        _install(root, "/etc/resolv.conf", resolv_conf.encode(), 0o644)
        if env_text is not None:
            _install(root, ENVD_ENV_PATH, env_text.encode(), 0o644)
        try:
            return make_ext4(image_path, disk_mb, root)
        except GuestError as exc:
            required_mb = required_disk_mb(root)
            if disk_mb >= required_mb:
                raise
            raise GuestError(
                f"a {disk_mb} MiB disk is too small for the template in {rootfs}: "
                f"its files need a disk of at least {required_mb} MiB; raise disk_mb"
            ) from exc
    finally:
        discard(staging)


def required_disk_mb(root: Path) -> int:
    """A disk size (MiB) that holds ``root`` with the seed's mkfs flags, a little conservative.

    Counts 4 KiB blocks of files and directories (files up to 60 bytes live in the inode),
    then adds what mke2fs reserves for a disk of that size: the journal, one 256-byte inode
    per 16 KiB, and ~5 % for group metadata and extent blocks.
    """
    content_blocks = 0
    entries = 0
    seen: set[tuple[int, int]] = set()
    for directory, _, names in os.walk(root):
        content_blocks += max(1, math.ceil(os.lstat(directory).st_size / ROOTFS_BLOCK_SIZE))
        entries += 1
        for name in names:
            info = os.lstat(os.path.join(directory, name))
            entries += 1
            if (info.st_dev, info.st_ino) in seen or info.st_size <= _INLINE_DATA_BYTES:
                continue
            seen.add((info.st_dev, info.st_ino))
            content_blocks += math.ceil(info.st_size / ROOTFS_BLOCK_SIZE)
    content_mb = content_blocks * ROOTFS_BLOCK_SIZE / (1 << 20)
    size_mb = max(math.ceil(content_mb), math.ceil(entries * _INODE_RATIO_BYTES / (1 << 20)))
    while True:
        needed = math.ceil(content_mb * 1.05 + _journal_mb(size_mb) + size_mb / 64 + 2)
        if needed <= size_mb:
            return size_mb
        size_mb = needed


def _journal_mb(disk_mb: int) -> int:
    """mke2fs's default journal size for a disk of ``disk_mb`` MiB (4 KiB blocks)."""
    for limit_mb, journal_mb in ((8, 0), (128, 4), (1024, 16), (2048, 32), (16384, 64)):
        if disk_mb < limit_mb:
            return journal_mb
    return 128


def _stage_directory(source: Path, root: Path) -> None:
    """``root`` = a copy of ``source``: hard links when on one file system, else a full copy."""
    link = os.stat(source).st_dev == os.stat(root.parent).st_dev
    argv = ["cp", "-a", *(["-l"] if link else []), f"{source}/.", str(root)]
    root.mkdir()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()
        raise GuestError(
            f"cannot copy the template root {source}: {detail[0] if detail else 'cp failed'}; "
            "check that it is readable (run as root for a root-owned tree)"
        )


def _path_in_root(root: Path, guest_path: str) -> Path:
    """The host path of ``guest_path`` in the guest whose ``/`` is ``root``.

    Directory components that are symlinks are followed the way the guest would follow
    them (absolute targets restart at ``root``; ``..`` stops at ``root``); missing
    directories are created. The last component is returned as is, not followed.
    """
    *pending, leaf = [part for part in guest_path.split("/") if part not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > _SYMLINK_HOPS:
                raise GuestError(
                    f"too many symlinks resolving {guest_path} in {root}: fix the template's links"
                )
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            continue
        resolved.append(part)
    directory = root.joinpath(*resolved)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GuestError(f"cannot create {guest_path}'s directory in the template: {exc}") from exc
    return directory / leaf


def _install(root: Path, guest_path: str, data: bytes, mode: int) -> None:
    """Replace the directory entry ``guest_path`` with a new root-readable file."""
    path = _path_in_root(root, guest_path)
    if path.is_dir() and not path.is_symlink():
        raise GuestError(
            f"the template has a directory at {guest_path}, where ember installs a file: remove it"
        )
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        os.fchmod(file.fileno(), mode)


def _hosts(hostname: str) -> str:
    return f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"


def _env_file(start_env: Mapping[str, str]) -> str:
    bad = sorted(name for name in start_env if not _ENV_NAME.fullmatch(name))
    if bad:
        raise UsageError(f"invalid environment variable names for the agent: {', '.join(map(repr, bad))}")
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in sorted(start_env.items()))

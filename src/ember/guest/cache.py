"""The host directory where provisioned guest artefacts outlive a process.

A guest kernel costs a 26 MB download and an initramfs a few seconds of packing; both are
pure functions of their inputs, so they are made once and kept outside the repository
(default ``/var/cache/ember``, ``EMBER_CACHE_DIR`` overrides)::

    {cache}/
      debs/                         .deb files fetched by ``apt-get download``
      kernels/{version}/{arch}/     default HOST_KERNELS_DIR for provisioned kernels
      initramfs/{sha256}.cpio.gz    one initramfs per content hash

Every artefact is published by renaming a finished temporary sibling into place, so a
reader (or a second process provisioning at the same time) sees a whole artefact or none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from ember.errors import GuestError

CACHE_DIR_ENV = "EMBER_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("/var/cache/ember")


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The cache root: ``EMBER_CACHE_DIR`` when set, else ``/var/cache/ember``."""
    env = os.environ if environ is None else environ
    value = env.get(CACHE_DIR_ENV)
    return Path(value) if value else DEFAULT_CACHE_DIR


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents), converting permission errors into an actionable message."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GuestError(
            f"cannot create {path}: {exc}; run as root or set {CACHE_DIR_ENV} to a writable directory"
        ) from exc
    return path


def publish(temporary: Path, final: Path) -> Path:
    """Rename a finished ``temporary`` file or directory to ``final``.

    When another process published ``final`` first, its copy wins and ``temporary`` is
    removed: the artefacts are deterministic, so either is correct.
    """
    try:
        os.rename(temporary, final)
    except OSError as exc:
        if not final.exists():
            raise GuestError(f"cannot move {temporary} to {final}: {exc}; check permissions") from exc
        discard(temporary)
    return final


def discard(path: Path) -> None:
    """Remove a temporary file or directory, ignoring one that is already gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

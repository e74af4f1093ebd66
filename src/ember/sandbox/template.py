"""The ext4 image a create-build boots: template root filesystem + envd + ember-init.

The default template's image is cached by what it is made of (the template, the agent,
the disk size): mkfs output differs between runs, so rebuilding it each time would also
give a new image layer build each time. A user's directory or tar is assembled afresh,
since ember cannot tell cheaply whether its content changed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ember.envd.bundle import build_agent
from ember.environment import Environment
from ember.guest import assemble_template_image, default_template_rootfs


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def envd_agent(env: Environment, cache_root: Path, progress: Callable[[str], None]) -> Path:
    """HOST_ENVD_PATH when it exists, else ember's own agent bundled into the cache."""
    if env.host_envd_path.is_file():
        progress(f"✓ envd: {env.host_envd_path}")
        return env.host_envd_path
    bundle_dir = cache_root / "envd"
    bundle_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=bundle_dir) as scratch:
        built = build_agent(Path(scratch) / "envd")
        target = bundle_dir / f"envd-{_digest(built)[:16]}"
        if not target.exists():
            os.replace(built, target)
    progress(f"✓ envd: {target} (ember's agent; set HOST_ENVD_PATH to use another)")
    return target


def template_image(
    source: Path | None,
    disk_mb: int,
    env: Environment,
    cache_root: Path,
    scratch: Path,
    progress: Callable[[str], None],
) -> Path:
    """The image to boot; ``source`` is a root filesystem directory or tar, None for the default template.

    An image made from ``source`` is written into ``scratch`` (the caller's, removed with it).
    """
    envd = envd_agent(env, cache_root, progress)
    images = cache_root / "images"
    images.mkdir(parents=True, exist_ok=True)
    if source is not None:
        progress(f"⚙ Assembling {disk_mb} MB image from {source}")
        return assemble_template_image(source, scratch / "image.ext4", disk_mb, envd)
    rootfs = default_template_rootfs(cache_root=cache_root)
    key = hashlib.sha256(f"{rootfs.resolve()}:{_digest(envd)}:{disk_mb}".encode()).hexdigest()[:16]
    target = images / f"default-{key}.ext4"
    if target.exists():
        progress(f"✓ Template image {target}")
        return target
    progress(f"⚙ Assembling {disk_mb} MB image from the default Debian template")
    with tempfile.TemporaryDirectory(dir=images) as staging:
        built = assemble_template_image(rootfs, Path(staging) / "image.ext4", disk_mb, envd)
        os.replace(built, target)
    return target

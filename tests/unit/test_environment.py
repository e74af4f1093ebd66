from pathlib import Path

import pytest

from ember.environment import Environment
from ember.errors import UsageError


def test_local_mode_puts_node_directories_under_the_storage_dir(tmp_path: Path) -> None:
    env = Environment.resolve(str(tmp_path / "store"), environ={"TARGET_ARCH": "amd64"})
    root = (tmp_path / "store").resolve()
    assert env.local_mode
    assert env.host_kernels_dir == root / "kernels"
    assert env.firecracker_versions_dir == root / "fc-versions"
    assert env.orchestrator_base_path == root / "orchestrator"
    assert env.snapshot_cache_dir == root / "snapshot-cache"
    assert env.sandbox_dir == Path("/fc-vm")


def test_remote_storage_uses_the_production_defaults() -> None:
    env = Environment.resolve("gs://bucket", environ={"TARGET_ARCH": "arm64"})
    assert not env.local_mode
    assert env.target_arch == "arm64"
    assert env.host_kernels_dir == Path("/fc-kernels")
    assert env.snapshot_cache_dir == Path("/mnt/snapshot-cache")


def test_explicit_variables_win_over_local_defaults(tmp_path: Path) -> None:
    env = Environment.resolve(
        str(tmp_path),
        environ={"SNAPSHOT_CACHE_DIR": "/nvme/cache", "SANDBOX_DIR": "/sbx", "HOST_ENVD_PATH": "/opt/envd"},
    )
    assert env.snapshot_cache_dir == Path("/nvme/cache")
    assert env.sandbox_dir == Path("/sbx")
    assert env.host_envd_path == Path("/opt/envd")


def test_unknown_target_arch_is_refused() -> None:
    with pytest.raises(UsageError, match="TARGET_ARCH='riscv64' is not supported"):
        Environment.resolve(None, environ={"TARGET_ARCH": "riscv64"})


@pytest.mark.parametrize(
    ("text", "seconds"), [(None, 10.0), ("30s", 30.0), ("1m30s", 90.0), ("45", 45.0), ("2.5", 2.5)]
)
def test_envd_timeout_is_a_go_duration_or_seconds(text: str | None, seconds: float) -> None:
    environ = {} if text is None else {"ENVD_TIMEOUT": text}
    assert Environment.resolve("gs://bucket", environ).envd_timeout_s == seconds


@pytest.mark.parametrize("text", ["0", "-5s", "soon", "10 s"])
def test_a_bad_envd_timeout_is_refused_with_what_to_set(text: str) -> None:
    with pytest.raises(UsageError, match=r"ENVD_TIMEOUT=.* use e\.g\. 10s"):
        Environment.resolve("gs://bucket", {"ENVD_TIMEOUT": text})

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ember.nbd import NbdDevicePool, NbdError, attach_fuse, kernel_nbd_available
from ember.nbd.client import Endpoint, parse_url


def fake_sysfs(root: Path, devices: dict[int, tuple[int, bool]]) -> Path:
    """nbdN -> (size in sectors, connected?) laid out as /sys/block."""
    for index, (size, connected) in devices.items():
        device = root / f"nbd{index}"
        device.mkdir(parents=True)
        (device / "size").write_text(f"{size}\n")
        if connected:
            (device / "pid").write_text("1234\n")
    (root / "loop0").mkdir()
    return root


def test_the_pool_hands_out_only_devices_without_pid_and_with_zero_size(tmp_path: Path) -> None:
    pool = NbdDevicePool(
        fake_sysfs(tmp_path, {0: (0, True), 1: (2048, False), 2: (0, False), 10: (0, False)})
    )
    assert pool.acquire() == 2
    assert pool.acquire() == 10
    with pytest.raises(NbdError, match="no free /dev/nbdN device: load the module with more devices"):
        pool.acquire()
    pool.release(2)
    assert pool.acquire() == 2


def test_missing_fuse_tools_name_the_debian_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NbdError, match=r"nbdfuse not found: install the Debian package libnbd-bin"):
        attach_fuse("nbd+unix:///?socket=/nonexistent")


def test_kernel_availability_follows_the_nbd_module() -> None:
    assert kernel_nbd_available() == os.path.exists("/sys/module/nbd")


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("nbd+unix:///?socket=/run/a.sock", Endpoint("", unix_path="/run/a.sock")),
        ("nbd+unix:///disk%201?socket=/s", Endpoint("disk 1", unix_path="/s")),
        ("nbd://127.0.0.1:10810/exp", Endpoint("exp", host="127.0.0.1", port=10810)),
        ("nbd://example.com", Endpoint("", host="example.com", port=10809)),
    ],
)
def test_nbd_urls_parse_into_endpoints(url: str, endpoint: Endpoint) -> None:
    assert parse_url(url) == endpoint


@pytest.mark.parametrize("url", ["http://x/", "nbd+unix:///name", "/just/a/path"])
def test_urls_that_are_not_nbd_are_refused_with_the_accepted_forms(url: str) -> None:
    with pytest.raises(NbdError, match="nbd"):
        parse_url(url)

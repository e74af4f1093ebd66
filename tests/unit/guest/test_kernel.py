from __future__ import annotations

import json
from pathlib import Path

import pytest

from ember.errors import EmberError
from ember.guest import GUEST_MODULES, load_order, open_kernel, provision_kernel, resolve_vmlinux
from ember.guest.kernel import MODULE_ORDER, STAMP, download_deb, kernel_version_for

VERSION = "vmlinux-6.1.0-56-cloud-amd64"


def _place(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_vmlinux_is_found_under_version_and_arch(tmp_path: Path) -> None:
    expected = _place(tmp_path / VERSION / "arm64" / "vmlinux.bin")
    _place(tmp_path / VERSION / "vmlinux.bin")
    assert resolve_vmlinux(tmp_path, VERSION, "arm64") == expected


def test_vmlinux_falls_back_to_the_legacy_path_without_arch(tmp_path: Path) -> None:
    legacy = _place(tmp_path / VERSION / "vmlinux.bin")
    assert resolve_vmlinux(tmp_path, VERSION, "amd64") == legacy


def test_a_missing_kernel_names_both_places_looked_in(tmp_path: Path) -> None:
    with pytest.raises(EmberError) as caught:
        resolve_vmlinux(tmp_path, VERSION, "amd64")
    message = str(caught.value)
    assert f"{tmp_path}/{VERSION}/amd64/vmlinux.bin" in message
    assert f"{tmp_path}/{VERSION}/vmlinux.bin" in message


def test_version_names_follow_the_seed_prefix() -> None:
    assert kernel_version_for("6.1.0-56-cloud-amd64") == VERSION


def test_dependencies_load_before_the_modules_that_need_them() -> None:
    depends = {
        "virtio_pci": ("virtio_ring", "virtio"),
        "virtio": (),
        "virtio_ring": (),
        "virtio_blk": ("virtio", "virtio_ring"),
    }
    assert load_order(["virtio_pci", "virtio_blk"], depends, set()) == (
        "virtio_ring",
        "virtio",
        "virtio_pci",
        "virtio_blk",
    )


def test_built_in_modules_are_not_loaded() -> None:
    depends = {"virtio_blk": ("virtio",), "virtio": ()}
    assert load_order(["virtio_blk", "ext4"], depends, {"ext4", "virtio"}) == ("virtio_blk",)


def test_a_module_the_kernel_lacks_is_reported_with_who_needs_it() -> None:
    with pytest.raises(
        EmberError, match=r"kernel module virtio is neither a .ko file nor built in.*virtio_blk"
    ):
        load_order(["virtio_blk"], {"virtio_blk": ("virtio",)}, set())


def test_a_dependency_cycle_is_reported() -> None:
    with pytest.raises(EmberError, match="cycle: a -> b -> a"):
        load_order(["a"], {"a": ("b",), "b": ("a",)}, set())


def test_the_guest_needs_virtio_block_and_pci() -> None:
    assert {"virtio_blk", "virtio_pci"} <= set(GUEST_MODULES)


def _fake_provisioned(kernels_dir: Path, arch: str = "amd64") -> Path:
    directory = kernels_dir / VERSION / arch
    _place(directory / "vmlinuz")
    _place(directory / "vmlinux.bin")
    _place(directory / "modules" / MODULE_ORDER, b"virtio_ring\nvirtio\n")
    record = {"package": "linux-image-6.1.0-56-cloud-amd64", "modules": list(GUEST_MODULES)}
    _place(directory / STAMP, json.dumps(record).encode())
    return directory


def test_a_provisioned_kernel_is_reused_without_downloading(tmp_path: Path) -> None:
    directory = _fake_provisioned(tmp_path / "kernels")
    empty_deb_cache = tmp_path / "debs"
    kernel = provision_kernel(
        tmp_path / "kernels", "amd64", package="linux-image-6.1.0-56-cloud-amd64", deb_cache=empty_deb_cache
    )
    assert kernel.directory == directory
    assert kernel.vmlinuz_path == directory / "vmlinuz"
    assert kernel.module_names() == ("virtio_ring", "virtio")
    assert not empty_deb_cache.exists()


def test_an_incomplete_kernel_directory_is_refused(tmp_path: Path) -> None:
    directory = _fake_provisioned(tmp_path)
    (directory / "vmlinuz").unlink()
    with pytest.raises(EmberError, match=r"incomplete.*vmlinuz missing"):
        open_kernel(tmp_path, VERSION, "amd64")


def test_a_failed_download_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(EmberError, match=r"cannot download ember-no-such-package.*run `apt-get update`"):
        download_deb("ember-no-such-package", "amd64", tmp_path)
    assert list(tmp_path.iterdir()) == []

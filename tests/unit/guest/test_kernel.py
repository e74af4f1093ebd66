from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ember.errors import EmberError, GuestError
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


RELEASE = "6.1.0-56-cloud-amd64"
PACKAGE = f"linux-image-{RELEASE}"
needs_dpkg_and_mounts = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("dpkg-deb") is None,
    reason="needs root (a small tmpfs) and dpkg-deb",
)


def _kernel_deb(deb_cache: Path, vmlinuz_bytes: int) -> Path:
    """A linux-image .deb holding only a random (incompressible) bzImage of ``vmlinuz_bytes``."""
    tree = deb_cache.parent / "package"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {PACKAGE}\nVersion: 1\nArchitecture: amd64\nMaintainer: ember <ember@localhost>\n"
        "Description: a kernel package that fills a small disk\n"
    )
    _place(tree / "boot" / f"vmlinuz-{RELEASE}", os.urandom(vmlinuz_bytes))
    deb_cache.mkdir()
    deb = deb_cache / f"{PACKAGE}_1_amd64.deb"
    subprocess.run(["dpkg-deb", "-Zgzip", "--build", str(tree), str(deb)], check=True, capture_output=True)
    return deb


@contextmanager
def _small_disk(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _assert_disk_full_refusal(failure: GuestError, action: str, where: Path) -> None:
    message = str(failure)
    assert message.startswith(f"cannot {action}: the disk is full ("), message
    assert f"free space under {where} " in message and message.endswith("and retry"), message
    assert "apt-get update" not in message


@pytest.mark.root
@needs_dpkg_and_mounts
def test_a_disk_that_fills_while_dpkg_unpacks_the_kernel_says_to_free_space(tmp_path: Path) -> None:
    """Reproduction: HOST_KERNELS_DIR on a full disk; the old main said "run `apt-get update`".

    dpkg -x reports a full disk through tar, as a short write ("Wrote only N of M bytes"):
    the words "No space left on device" never reach its stderr.
    """
    _kernel_deb(tmp_path / "debs", 3 << 20)
    with _small_disk(tmp_path / "kernels", "1m") as kernels:
        with pytest.raises(GuestError) as failed:
            provision_kernel(kernels, "amd64", package=PACKAGE, deb_cache=tmp_path / "debs")
        _assert_disk_full_refusal(failed.value, f"unpack {PACKAGE}_1_amd64.deb", kernels / VERSION)
        assert list((kernels / VERSION).iterdir()) == [], "a half-unpacked kernel was left behind"


@pytest.mark.root
@needs_dpkg_and_mounts
def test_a_disk_that_fills_while_the_kernel_is_copied_out_says_to_free_space(tmp_path: Path) -> None:
    """dpkg's scratch copy fits, the kernel directory's does not: an OSError, not an internal error."""
    _kernel_deb(tmp_path / "debs", 3 << 20)
    with _small_disk(tmp_path / "kernels", "5m") as kernels:
        with pytest.raises(GuestError) as failed:
            provision_kernel(kernels, "amd64", package=PACKAGE, deb_cache=tmp_path / "debs")
        _assert_disk_full_refusal(failed.value, f"unpack {PACKAGE}_1_amd64.deb", kernels / VERSION)
        assert list((kernels / VERSION).iterdir()) == [], "a half-unpacked kernel was left behind"


def test_a_download_into_a_full_disk_says_to_free_space_in_the_deb_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """apt-get names the full disk itself; the message must name the cache it writes to, not its scratch."""

    def full_disk(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        error = "E: Write error - write (28: No space left on device)\n"
        return subprocess.CompletedProcess(argv, 100, "", error)

    monkeypatch.setattr(subprocess, "run", full_disk)
    with pytest.raises(GuestError) as failed:
        download_deb(PACKAGE, "amd64", tmp_path)
    _assert_disk_full_refusal(failed.value, f"download {PACKAGE}", tmp_path)
    assert "No space left on device" in str(failed.value)
    assert list(tmp_path.iterdir()) == []

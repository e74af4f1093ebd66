from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from ember.errors import EmberError
from ember.guest import GuestKernel, build_initramfs
from ember.guest.initramfs import INIT_SCRIPT

pytestmark = pytest.mark.skipif(not Path("/bin/busybox").is_file(), reason="busybox-static is not installed")


def _kernel(root: Path, modules: dict[str, bytes]) -> GuestKernel:
    directory = root / "vmlinux-test" / "amd64"
    (directory / "modules").mkdir(parents=True)
    for name, data in modules.items():
        (directory / "modules" / f"{name}.ko").write_bytes(data)
    (directory / "modules" / "modules.order").write_text("".join(f"{name}\n" for name in modules))
    return GuestKernel("vmlinux-test", "amd64", directory)


def _listing(archive: Path) -> list[str]:
    done = subprocess.run(
        ["cpio", "-itv", "--quiet"],
        input=gzip.decompress(archive.read_bytes()),
        capture_output=True,
        check=True,
    )
    return done.stdout.decode().splitlines()


def _entry(listing: list[str], name: str) -> str:
    matches = [line for line in listing if line.split()[-1] == name or f" {name} -> " in line]
    assert len(matches) == 1, f"{name} in {listing[:20]}"
    return matches[0]


def test_initramfs_holds_init_busybox_console_and_modules_in_order(tmp_path: Path) -> None:
    kernel = _kernel(tmp_path, {"virtio_ring": b"ring", "virtio": b"virtio-module", "virtio_blk": b"blk"})
    archive = build_initramfs(kernel, cache_root=tmp_path / "cache")
    listing = _listing(archive)
    assert _entry(listing, "init").startswith("-rwxr-xr-x")
    assert _entry(listing, "bin/busybox").startswith("-rwxr-xr-x")
    assert _entry(listing, "bin/sh").endswith("bin/sh -> busybox")
    assert _entry(listing, "bin/switch_root").endswith("-> busybox")
    assert _entry(listing, "dev/console").startswith("crw-------")
    assert "5,   1" in _entry(listing, "dev/console")
    modules = [line.split()[-1] for line in listing if line.endswith(".ko")]
    assert modules == ["lib/modules/virtio_ring.ko", "lib/modules/virtio.ko", "lib/modules/virtio_blk.ko"]


def test_files_keep_their_bytes(tmp_path: Path) -> None:
    kernel = _kernel(tmp_path, {"virtio": b"virtio-module"})
    archive = build_initramfs(kernel, cache_root=tmp_path / "cache")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        ["cpio", "-idm", "--quiet"], input=gzip.decompress(archive.read_bytes()), cwd=out, check=True
    )
    assert (out / "init").read_text() == INIT_SCRIPT
    assert (out / "lib/modules/virtio.ko").read_bytes() == b"virtio-module"
    assert (out / "lib/modules/modules.order").read_text() == "virtio\n"
    assert (out / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()


def test_same_inputs_reuse_the_cached_image_and_new_inputs_make_another(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = build_initramfs(_kernel(tmp_path / "a", {"virtio": b"one"}), cache_root=cache)
    again = build_initramfs(_kernel(tmp_path / "b", {"virtio": b"one"}), cache_root=cache)
    other = build_initramfs(_kernel(tmp_path / "c", {"virtio": b"two"}), cache_root=cache)
    assert first == again
    assert other != first
    assert sorted(p.name for p in (cache / "initramfs").iterdir()) == sorted({first.name, other.name})


def test_a_kernel_without_modules_is_refused_with_the_fix(tmp_path: Path) -> None:
    kernel = GuestKernel("vmlinux-test", "amd64", tmp_path / "missing")
    with pytest.raises(EmberError, match="provision the kernel"):
        build_initramfs(kernel, cache_root=tmp_path / "cache")

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ember.errors import EmberError, UsageError
from ember.guest import busybox_rootfs, make_ext4

INIT = "#!/bin/sh\nexport PATH=/bin\npoweroff -f\n"


def _dumpe2fs(image: Path) -> dict[str, str]:
    done = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True)
    fields = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _debugfs_cat(image: Path, path: str) -> str:
    """The file's content; debugfs 1.47.0 pads inline-data files to 60 bytes, so cut at its size."""
    stat = subprocess.run(["debugfs", "-R", f"stat {path}", str(image)], capture_output=True, text=True)
    size = int(stat.stdout.split("Size: ", 1)[1].split()[0])
    done = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, text=True)
    return done.stdout[:size]


def test_image_has_the_seed_feature_flags_block_size_and_no_reserved_blocks(tmp_path: Path) -> None:
    image = make_ext4(tmp_path / "rootfs.ext4", 32)
    header = _dumpe2fs(image)
    features = set(header["Filesystem features"].split())
    assert {"ext_attr", "extent", "extra_isize", "filetype", "flex_bg", "huge_file"} <= features
    assert {"inline_data", "large_file", "sparse_super2"} <= features
    assert not {"64bit", "dir_index", "dir_nlink"} & features
    assert header["Block size"] == "4096"
    assert header["Reserved block count"] == "0"
    assert image.stat().st_size == 32 << 20


def test_image_holds_a_copy_of_the_source_directory(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "etc").mkdir(parents=True)
    (source / "etc" / "hostname").write_text("ember-guest\n")
    image = make_ext4(tmp_path / "rootfs.ext4", 16, source)
    assert _debugfs_cat(image, "/etc/hostname") == "ember-guest\n"


def test_inode_ratio_sets_how_many_inodes_the_image_has(tmp_path: Path) -> None:
    dense = _dumpe2fs(make_ext4(tmp_path / "dense.ext4", 32, inode_ratio=4096))
    sparse = _dumpe2fs(make_ext4(tmp_path / "sparse.ext4", 32, inode_ratio=65536))
    assert int(dense["Inode count"]) > int(sparse["Inode count"])


def test_a_source_larger_than_the_image_fails_and_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "big").write_bytes(b"\1" * (3 << 20))
    with pytest.raises(EmberError, match="check that 2 MiB holds the source directory"):
        make_ext4(tmp_path / "out" / "rootfs.ext4", 2, source)
    assert list((tmp_path / "out").iterdir()) == []


def test_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="positive number of MiB, got 0"):
        make_ext4(tmp_path / "rootfs.ext4", 0)


@pytest.mark.skipif(not Path("/bin/busybox").is_file(), reason="busybox-static is not installed")
def test_busybox_rootfs_has_an_executable_init_and_applet_links(tmp_path: Path) -> None:
    root = busybox_rootfs(tmp_path / "root", INIT)
    assert (root / "sbin" / "init").read_text() == INIT
    assert (root / "sbin" / "init").stat().st_mode & 0o111
    assert (root / "bin" / "sh").readlink() == Path("busybox")
    for mount_point in ("dev", "proc", "sys", "tmp"):
        assert (root / mount_point).is_dir()
    done = subprocess.run([str(root / "bin" / "sh"), "-c", "echo $((6 * 7))"], capture_output=True, text=True)
    assert done.stdout == "42\n"

from __future__ import annotations

import re
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from ember.errors import GuestError, UsageError
from ember.guest import (
    GUEST_INIT_SCRIPT,
    assemble_template_image,
    required_disk_mb,
    rootfs_from_tar,
)

ENVD = b"#!/usr/bin/env python3\nprint('stand-in agent')\n"


def _debugfs(image: Path, request: str) -> str:
    done = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True)
    return done.stdout


def _mode(image: Path, path: str) -> tuple[str, int] | None:
    """The file's type and permission bits inside ``image``, or None when it does not exist."""
    match = re.search(r"Type: (\w+)\s+Mode:\s+(\d+)", _debugfs(image, f"stat {path}"))
    return (match.group(1), int(match.group(2), 8)) if match else None


def _cat(image: Path, path: str) -> bytes:
    """The content of ``path``; debugfs 1.47.0 pads inline-data files, so cut at the size."""
    size = int(_debugfs(image, f"stat {path}").split("Size: ", 1)[1].split()[0])
    done = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, check=True)
    return done.stdout[:size]


def _sample_root(root: Path) -> Path:
    """A tiny usr-merged root: /sbin -> usr/sbin as in Debian bookworm, plus a host /etc."""
    for name in ("usr/bin", "usr/sbin", "etc"):
        (root / name).mkdir(parents=True)
    (root / "sbin").symlink_to("usr/sbin")
    (root / "bin").symlink_to("usr/bin")
    (root / "usr/bin/tool").write_text("#!/bin/sh\necho tool\n")
    (root / "etc/hostname").write_text("build-host\n")
    (root / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    return root


@pytest.fixture
def envd(tmp_path: Path) -> Path:
    path = tmp_path / "envd.pyz"
    path.write_bytes(ENVD)
    return path


def test_image_from_a_directory_holds_the_agent_and_init_as_executables(tmp_path: Path, envd: Path) -> None:
    root = _sample_root(tmp_path / "root")
    image = assemble_template_image(root, tmp_path / "out" / "rootfs.ext4", 24, envd, hostname="sbx")
    assert image.stat().st_size == 24 << 20
    assert _mode(image, "/usr/bin/envd") == ("regular", 0o755)
    assert _cat(image, "/usr/bin/envd") == ENVD
    assert _mode(image, "/usr/sbin/ember-init") == ("regular", 0o755)
    assert _cat(image, "/usr/sbin/ember-init") == GUEST_INIT_SCRIPT.encode()
    assert _cat(image, "/etc/hostname") == b"sbx\n"
    assert b"127.0.1.1\tsbx\n" in _cat(image, "/etc/hosts")
    assert _cat(image, "/etc/resolv.conf") == b"nameserver 8.8.8.8\n"
    assert _mode(image, "/etc/resolv.conf") == ("regular", 0o644)
    assert _cat(image, "/usr/bin/tool") == b"#!/bin/sh\necho tool\n"
    for mount_point in ("/proc", "/sys", "/dev", "/run", "/tmp"):
        mode = _mode(image, mount_point)
        assert mode is not None and mode[0] == "directory"
    assert _mode(image, "/tmp") == ("directory", 0o1777)
    assert list((tmp_path / "out").iterdir()) == [image]


def test_the_source_directory_is_left_untouched(tmp_path: Path, envd: Path) -> None:
    root = _sample_root(tmp_path / "root")
    assemble_template_image(root, tmp_path / "rootfs.ext4", 24, envd)
    assert (root / "etc/hostname").read_text() == "build-host\n"
    assert (root / "etc/resolv.conf").readlink() == Path("/run/systemd/resolve/stub-resolv.conf")
    assert not (root / "usr/bin/envd").exists()
    assert not (root / "usr/sbin/ember-init").exists()


def test_absolute_symlinks_in_the_root_resolve_inside_it_not_on_the_host(tmp_path: Path, envd: Path) -> None:
    host_dir = tmp_path / "host-sbin"
    host_dir.mkdir()
    root = tmp_path / "root"
    (root / "usr").mkdir(parents=True)
    (root / "sbin").symlink_to(host_dir)
    image = assemble_template_image(root, tmp_path / "rootfs.ext4", 24, envd)
    assert list(host_dir.iterdir()) == []
    assert _mode(image, f"{host_dir}/ember-init") == ("regular", 0o755)


@pytest.mark.parametrize("gzipped", [False, True], ids=[".tar", ".tar.gz"])
def test_image_from_a_root_filesystem_archive(tmp_path: Path, envd: Path, gzipped: bool) -> None:
    root = _sample_root(tmp_path / "root")
    archive = tmp_path / ("rootfs.tar.gz" if gzipped else "rootfs.tar")
    with tarfile.open(archive, "w:gz") if gzipped else tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=".")
    image = assemble_template_image(archive, tmp_path / "rootfs.ext4", 24, envd)
    assert _cat(image, "/usr/bin/tool") == b"#!/bin/sh\necho tool\n"
    assert _mode(image, "/usr/sbin/ember-init") == ("regular", 0o755)
    assert _mode(image, "/usr/bin/envd") == ("regular", 0o755)


def test_unpacking_keeps_modes_and_symlinks(tmp_path: Path) -> None:
    root = _sample_root(tmp_path / "root")
    (root / "usr/bin/tool").chmod(0o4755)
    archive = tmp_path / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=".")
    dest = rootfs_from_tar(archive, tmp_path / "unpacked")
    assert (dest / "sbin").readlink() == Path("usr/sbin")
    assert stat.S_IMODE((dest / "usr/bin/tool").stat().st_mode) == 0o4755


def test_an_unreadable_archive_is_a_guest_error_naming_it(tmp_path: Path, envd: Path) -> None:
    archive = tmp_path / "rootfs.tar.gz"
    archive.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(GuestError, match=r"cannot unpack template archive .*rootfs\.tar\.gz"):
        assemble_template_image(archive, tmp_path / "out" / "rootfs.ext4", 24, envd)
    with pytest.raises(GuestError, match="does not exist"):
        rootfs_from_tar(tmp_path / "missing.tar", tmp_path / "dest")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_disk_too_small_says_how_big_it_must_be_and_that_size_works(tmp_path: Path, envd: Path) -> None:
    root = _sample_root(tmp_path / "root")
    (root / "usr/lib").mkdir()
    for index in range(12):
        (root / "usr/lib" / f"blob{index}").write_bytes(bytes([index + 1]) * (1 << 20))
    with pytest.raises(GuestError, match=r"a 8 MiB disk is too small .* at least (\d+) MiB") as caught:
        assemble_template_image(root, tmp_path / "small.ext4", 8, envd)
    needed_mb = int(re.findall(r"at least (\d+) MiB", str(caught.value))[0])
    assert needed_mb > 12
    image = assemble_template_image(root, tmp_path / "fits.ext4", needed_mb, envd)
    assert image.stat().st_size == needed_mb << 20


def test_required_size_counts_each_hard_linked_file_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").write_bytes(b"\1" * (8 << 20))
    single = required_disk_mb(root)
    (root / "b").hardlink_to(root / "a")
    assert required_disk_mb(root) == single
    (root / "c").write_bytes(b"\1" * (8 << 20))
    assert required_disk_mb(root) >= single + 8


def test_start_env_is_exported_to_the_agent_shell_quoted(tmp_path: Path, envd: Path) -> None:
    root = _sample_root(tmp_path / "root")
    env = {"GREETING": "it's a 'test' $HOME", "B": "2"}
    image = assemble_template_image(root, tmp_path / "rootfs.ext4", 24, envd, start_env=env)
    text = _cat(image, "/etc/ember/env").decode()
    done = subprocess.run(
        ["sh", "-c", f'{text}\nprintf "%s|%s" "$GREETING" "$B"'], capture_output=True, text=True, check=True
    )
    assert done.stdout == "it's a 'test' $HOME|2"


def test_without_start_env_there_is_no_env_file(tmp_path: Path, envd: Path) -> None:
    image = assemble_template_image(_sample_root(tmp_path / "root"), tmp_path / "rootfs.ext4", 24, envd)
    assert _mode(image, "/etc/ember/env") is None


def test_invalid_environment_names_are_refused(tmp_path: Path, envd: Path) -> None:
    with pytest.raises(UsageError, match="'1BAD'"):
        assemble_template_image(tmp_path, tmp_path / "rootfs.ext4", 24, envd, start_env={"1BAD": "x"})


def test_a_missing_agent_is_a_guest_error(tmp_path: Path) -> None:
    root = _sample_root(tmp_path / "root")
    with pytest.raises(GuestError, match="cannot read the agent"):
        assemble_template_image(root, tmp_path / "rootfs.ext4", 24, tmp_path / "no-envd")

"""OCI images as template roots with the real skopeo and umoci: a local OCI layout of two layers
(the upper one deletes a file of the lower one and changes another) and the same image as a
docker-archive give the image's filesystem, whiteouts honoured; images ember's envd cannot run
in, bad references and missing sources are refused with what is wrong. No VM boots."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from ember.errors import GuestError, UsageError
from ember.templates import FromImage, pull_rootfs

pytestmark = pytest.mark.root

FAKE_PYTHON = b"#!/bin/sh\necho 'Python 3.11.2'\n"


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("unpacking images with their owners needs root")
    for tool in ("skopeo", "umoci"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup.sh installs it)")


def _umoci(*args: str) -> None:
    subprocess.run(["umoci", *args], check=True, capture_output=True)


def _layer(layout: Path, parent: str, tag: str, bundle: Path, change: dict[str, bytes | None]) -> None:
    """Tag ``tag``: ``parent`` plus one layer that writes (bytes) or deletes (None) these paths."""
    _umoci("unpack", "--image", f"{layout}:{parent}", str(bundle))
    rootfs = bundle / "rootfs"
    for name, data in change.items():
        path = rootfs / name
        if data is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            if name.endswith("python3"):
                path.chmod(0o755)
    _umoci("repack", "--image", f"{layout}:{tag}", str(bundle))
    shutil.rmtree(bundle)


def _layers(layout: Path, tag: str) -> list[list[str]]:
    """The member names of each layer of ``tag``, lowest first, read from the layout itself."""
    index = json.loads((layout / "index.json").read_text())
    (entry,) = [m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag]
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / entry["digest"].removeprefix("sha256:")).read_text())
    names = []
    for layer in manifest["layers"]:
        with tarfile.open(blobs / layer["digest"].removeprefix("sha256:"), mode="r:*") as tar:
            names.append([name.removeprefix("./") for name in tar.getnames()])
    return names


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout with tags ``two-layers``, ``local-python`` and ``no-python``."""
    work = tmp_path_factory.mktemp("images")
    layout = work / "layout"
    _umoci("init", "--layout", str(layout))
    _umoci("new", "--image", f"{layout}:empty")
    _layer(
        layout, "empty", "lower", work / "bundle",
        {
            "usr/bin/python3": FAKE_PYTHON,
            "etc/doomed.conf": b"deleted by the upper layer\n",
            "etc/changed.conf": b"old content\n",
            "etc/kept.conf": b"kept as is\n",
        },
    )  # fmt: skip
    _layer(
        layout, "lower", "two-layers", work / "bundle",
        {"etc/doomed.conf": None, "etc/changed.conf": b"new content\n", "srv/added.txt": b"added\n"},
    )  # fmt: skip
    _layer(layout, "empty", "no-python", work / "bundle", {"etc/hostname": b"nopython\n"})
    _umoci("unpack", "--image", f"{layout}:empty", str(work / "bundle"))
    local_bin = work / "bundle" / "rootfs" / "usr" / "local" / "bin"
    local_bin.mkdir(parents=True)
    (local_bin / "python3.12").write_bytes(FAKE_PYTHON)
    (local_bin / "python3").symlink_to("python3.12")
    _umoci("repack", "--image", f"{layout}:local-python", str(work / "bundle"))
    shutil.rmtree(work / "bundle")
    return layout


def _tree(rootfs: Path) -> dict[str, tuple[str, int, bytes]]:
    """Every path under ``rootfs``: its kind, permission bits and content (a link's target)."""
    tree = {}
    for path in sorted(rootfs.rglob("*")):
        name = str(path.relative_to(rootfs))
        mode = path.lstat().st_mode & 0o7777
        if path.is_symlink():
            tree[name] = ("link", mode, os.readlink(path).encode())
        elif path.is_dir():
            tree[name] = ("dir", mode, b"")
        else:
            tree[name] = ("file", mode, path.read_bytes())
    return tree


def test_the_fixture_image_has_two_layers_and_a_whiteout(images: Path) -> None:
    lower, upper = _layers(images, "two-layers")
    assert "etc/doomed.conf" in lower and "usr/bin/python3" in lower
    assert "etc/.wh.doomed.conf" in upper and "etc/changed.conf" in upper


def test_a_local_oci_layout_unpacks_with_the_upper_layer_applied(images: Path, tmp_path: Path) -> None:
    rootfs = pull_rootfs(FromImage(f"oci:{images}:two-layers"), tmp_path)
    assert rootfs.is_dir() and rootfs.is_relative_to(tmp_path)
    etc = rootfs / "etc"
    assert not (etc / "doomed.conf").exists()
    assert (etc / "changed.conf").read_bytes() == b"new content\n"
    assert (etc / "kept.conf").read_bytes() == b"kept as is\n"
    assert (rootfs / "srv" / "added.txt").read_bytes() == b"added\n"
    assert (rootfs / "usr" / "bin" / "python3").read_bytes() == FAKE_PYTHON
    assert os.access(rootfs / "usr" / "bin" / "python3", os.X_OK)
    assert [name for name in _tree(rootfs) if ".wh." in name] == []
    # the pulled copy of the image is not left beside the root filesystem
    assert not (tmp_path / "oci").exists()


def test_a_docker_archive_of_the_image_gives_the_same_rootfs(images: Path, tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci:{images}:two-layers", f"docker-archive:{archive}:ember/small:2"],
        check=True,
        capture_output=True,
    )
    (tmp_path / "from-layout").mkdir()
    (tmp_path / "from-archive").mkdir()
    from_layout = pull_rootfs(FromImage(f"oci:{images}:two-layers"), tmp_path / "from-layout")
    from_archive = pull_rootfs(FromImage(f"docker-archive:{archive}"), tmp_path / "from-archive")
    tree = _tree(from_archive)
    assert "etc/doomed.conf" not in tree
    assert tree["etc/changed.conf"][2] == b"new content\n"
    assert tree == _tree(from_layout)


def test_python3_under_usr_local_as_a_symlink_is_enough(images: Path, tmp_path: Path) -> None:
    """As in the official python images: /usr/local/bin/python3 -> python3.12."""
    rootfs = pull_rootfs(FromImage(f"oci:{images}:local-python"), tmp_path)
    assert (rootfs / "usr" / "local" / "bin" / "python3").is_symlink()


def test_an_image_without_python3_is_refused_naming_python3(images: Path, tmp_path: Path) -> None:
    reference = f"oci:{images}:no-python"
    with pytest.raises(UsageError, match=r"image oci:.*:no-python has no python3, which ember's envd needs"):
        pull_rootfs(FromImage(reference), tmp_path)


def test_a_bad_reference_is_a_usage_error_before_anything_is_fetched(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"image reference 'bad ref!' is not valid: use e\.g\. python:3\.12"):
        pull_rootfs(FromImage("bad ref!"), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_local_layout_is_a_guest_error_naming_the_pull(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-layout"
    (tmp_path / "work").mkdir()
    with pytest.raises(GuestError, match=rf"^pulling oci:{missing}:latest failed: .+") as caught:
        pull_rootfs(FromImage(f"oci:{missing}:latest"), tmp_path / "work")
    assert "unpacking" not in str(caught.value)
    assert not (tmp_path / "work" / "bundle").exists()


def test_a_missing_tag_of_a_local_layout_is_a_guest_error_naming_the_pull(
    images: Path, tmp_path: Path
) -> None:
    with pytest.raises(GuestError, match=rf"^pulling oci:{images}:no-such-tag failed: .+"):
        pull_rootfs(FromImage(f"oci:{images}:no-such-tag"), tmp_path)

"""The default template's cache and mirror lookup; building it for real is the VM test's job."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ember.errors import GuestError
from ember.guest import apt_mirror, default_template_path, default_template_rootfs


def test_the_template_is_cached_under_templates_with_a_recipe_hash(tmp_path: Path) -> None:
    path = default_template_path(tmp_path)
    assert path.name == "rootfs"
    assert path.parent.parent == tmp_path / "templates"
    assert path.parent.name.startswith("debian-bookworm-")
    assert len(path.parent.name.removeprefix("debian-bookworm-")) == 16
    assert default_template_path(tmp_path) == path


def test_a_built_template_is_reused_without_running_debootstrap(tmp_path: Path) -> None:
    rootfs = default_template_path(tmp_path)
    rootfs.mkdir(parents=True)
    (rootfs.parent / "manifest.json").write_text(json.dumps({"suite": "bookworm"}))
    assert default_template_rootfs(mirror="http://127.0.0.1:9/debian", cache_root=tmp_path) == rootfs


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("debootstrap") is None, reason="needs root and debootstrap"
)
def test_an_unreachable_mirror_is_a_guest_error_and_leaves_no_partial_template(tmp_path: Path) -> None:
    with pytest.raises(
        GuestError, match=r"debootstrap of Debian bookworm from http://127\.0\.0\.1:9/debian failed"
    ):
        default_template_rootfs(mirror="http://127.0.0.1:9/debian", cache_root=tmp_path)
    assert list((tmp_path / "templates").iterdir()) == []


def test_the_mirror_comes_from_a_deb822_sources_file(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb-src deb\n# comment\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert apt_mirror("bookworm", tmp_path) == "http://mirror.example/debian"


def test_the_mirror_comes_from_a_one_line_sources_list(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://one.example/debian bookworm main\n"
    )
    assert apt_mirror("bookworm", tmp_path) == "http://one.example/debian"


def test_no_source_for_the_suite_says_how_to_fix_it(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("deb http://one.example/debian bullseye main\n")
    with pytest.raises(GuestError, match=r"no 'deb' source for Debian bookworm .* pass mirror="):
        apt_mirror("bookworm", tmp_path)

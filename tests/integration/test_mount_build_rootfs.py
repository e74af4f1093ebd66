"""mount-build-rootfs on a three-generation ext4 build chain that ember made itself.

Generation 1 is an ext4 image stored as a base layer; generations 2 and 3 are made the way
a sandbox makes them: the parent's rootfs served over NBD, attached (nbdfuse + loop here,
no kernel NBD module), mounted, written, unmounted, and the overlay exported as a diff.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ember.block import export_rootfs_build
from ember.build import BuildFile, TemplateInfo, TemplateMetadata
from ember.guest import make_ext4
from ember.sandbox import ServedRootfs, mounted, store_image_build
from ember.storage import ROOTFS, LocalStorage

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="attaching and mounting devices needs root"),
]


def _metadata(build: uuid.UUID) -> TemplateMetadata:
    return TemplateMetadata(version=2, template=TemplateInfo(str(build), "vmlinux-6.1.158", "qemu-7.2"))


def _write_layer(
    storage: LocalStorage, parent: uuid.UUID, child: uuid.UUID, files: dict[str, str], scratch: Path
) -> None:
    base = BuildFile.open(storage, parent, ROOTFS)
    with ServedRootfs(base, scratch, f"{child}-layer", base.block_size) as rootfs:
        device = rootfs.attach(scratch)
        mount_dir = scratch / f"mnt-{child}"
        mount_dir.mkdir()
        with mounted(device.path, mount_dir):
            for name, text in files.items():
                (mount_dir / name).write_text(text)
            (mount_dir / "etc" / "hostname").unlink(missing_ok=True)
        device.close()
        export_rootfs_build(rootfs.overlay, base.header, storage, child, _metadata(child), scratch)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[uuid.UUID]]:
    root = tmp_path_factory.mktemp("chain")
    storage = LocalStorage(root / "store" / "templates")
    source = root / "source"
    (source / "etc").mkdir(parents=True)
    (source / "etc" / "hostname").write_text("generation-1\n")
    (source / "gen1.txt").write_text("first\n")
    image = make_ext4(root / "rootfs.ext4", 64, source)
    builds = [uuid.uuid4() for _ in range(3)]
    store_image_build(image, storage, builds[0], _metadata(builds[0]), root)
    _write_layer(storage, builds[0], builds[1], {"gen2.txt": "second\n"}, root)
    _write_layer(storage, builds[1], builds[2], {"gen3.txt": "third\n", "gen1.txt": "rewritten\n"}, root)
    return root / "store", builds


def _digests(store: Path) -> dict[str, str]:
    return {
        str(path.relative_to(store)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(store.rglob("*"))
        if path.is_file()
    }


def _leftovers(mount_dir: Path) -> tuple[list[str], list[str]]:
    """Mounts and loop devices of mount-build-rootfs runs (its scratch dirs, the test's mount point).

    Only these: sandboxes and other tests on the host mount and attach things of their own.
    """

    def ours(line: str) -> bool:
        return "ember-mount-" in line or str(mount_dir) in line

    mounts = [line for line in Path("/proc/mounts").read_text().splitlines() if ours(line)]
    listed = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    return mounts, [line for line in listed.splitlines() if ours(line)]


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ember", "mount-build-rootfs", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_line(process: subprocess.Popen[str], prefix: str, timeout_s: float = 60) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith(prefix):
            return line.strip()
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError(
        f"no line starting {prefix!r}; stderr: {process.stderr.read() if process.stderr else ''}"
    )


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_mount_shows_the_newest_generation_and_cleans_up(
    chain: tuple[Path, list[uuid.UUID]], tmp_path: Path, stop_signal: signal.Signals
) -> None:
    store, builds = chain
    before = _digests(store)
    mount_dir = tmp_path / "mnt"
    mounts_before, loops_before = _leftovers(mount_dir)
    process = _start("-build", str(builds[2]), "-storage", str(store), "-mount", str(mount_dir))
    _wait_for_line(process, "rootfs mounted at path:")

    assert (mount_dir / "gen1.txt").read_text() == "rewritten\n"
    assert (mount_dir / "gen2.txt").read_text() == "second\n"
    assert (mount_dir / "gen3.txt").read_text() == "third\n"
    assert not (mount_dir / "etc" / "hostname").exists()
    (mount_dir / "scratch.txt").write_text("discarded on exit\n")

    process.send_signal(stop_signal)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "closing rootfs mount" in stdout
    assert _leftovers(mount_dir) == (mounts_before, loops_before)
    assert _digests(store) == before


def test_verify_checks_the_filesystem_and_exits(chain: tuple[Path, list[uuid.UUID]], tmp_path: Path) -> None:
    store, builds = chain
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ember",
            "mount-build-rootfs",
            "-build",
            str(builds[1]),
            "-storage",
            str(store),
            "-mount",
            str(tmp_path / "check"),
            "-verify",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "rootfs integrity verified" in result.stdout
    assert "journal files verified" in result.stdout
    assert "creating mount path directory:" in result.stdout


def test_empty_rootfs_is_exposed_as_a_zero_device(tmp_path: Path) -> None:
    process = _start("-empty", "-size", str(16 << 20))
    line = _wait_for_line(process, "rootfs exposed as device:")
    device = line.split(": ", 1)[1]
    with open(device, "rb") as disk:
        assert disk.read(1 << 20) == bytes(1 << 20)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == 0


def test_verify_without_mount_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ember", "mount-build-rootfs", "-empty", "-verify"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "ember mount-build-rootfs: -verify needs -mount: the journals are checked on the mounted rootfs"
    )

"""Guest kernels: the seed's path layout, and provisioning one from Debian's cloud kernel.

Layout under a kernels directory (``HOST_KERNELS_DIR``; ``{cache}/kernels`` by default)::

    {kernels_dir}/{version}/{arch}/
      vmlinux.bin        uncompressed ELF: what Firecracker (and QEMU ``microvm`` PVH) boots
      vmlinuz            the bzImage as Debian ships it: what QEMU ``q35``/``pc`` boots
      modules/           the .ko files the initramfs loads, plus modules.order (load order)
      .provisioned       stamp: the Debian package and version this directory came from

``version`` is ``vmlinux-<kernel release>`` (``vmlinux-6.1.0-56-cloud-amd64``), ``arch`` the Go
name (``amd64``/``arm64``, ``TARGET_ARCH``). ``vmlinux.bin`` is also looked up at the seed's
legacy ``{version}/vmlinux.bin`` for hand-placed kernels.

Debian kernels build virtio as modules and have no ``CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES``,
so a guest needs an initramfs that loads virtio before it can see its root disk; which
modules and in which order is decided here (``modinfo`` dependencies, sorted), once.
The package is fetched with ``apt-get download`` and unpacked with ``dpkg -x``: nothing is
installed on the host.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ember.environment import host_arch
from ember.errors import GuestError
from ember.guest.bzimage import extract_vmlinux
from ember.guest.cache import cache_dir, discard, ensure_dir, publish

VMLINUX = "vmlinux.bin"
VMLINUZ = "vmlinuz"
MODULES_DIR = "modules"
MODULE_ORDER = "modules.order"
STAMP = ".provisioned"
VERSION_PREFIX = "vmlinux-"
_DISK_FULL = re.compile(r"No space left on device|Wrote only \d+ of \d+ bytes")
"""How a full disk shows in a tool's errors: tar (under ``dpkg -x``) reports a short write only."""

# What a guest needs from the kernel's modules; their dependencies are added automatically.
GUEST_MODULES = (
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "vmw_vsock_virtio_transport",
    "fuse",
    "qemu_fw_cfg",
)
"""``qemu_fw_cfg`` exposes QEMU's fw_cfg files in sysfs: the host's channel that vouches for
the sandbox's envd token (the counterpart of Firecracker's MMDS)."""


@dataclass(frozen=True)
class GuestKernel:
    """A provisioned kernel directory: ``{kernels_dir}/{version}/{arch}``."""

    version: str
    arch: str
    directory: Path

    @property
    def vmlinux_path(self) -> Path:
        """The uncompressed ELF image (Firecracker, QEMU microvm)."""
        return self.directory / VMLINUX

    @property
    def vmlinuz_path(self) -> Path:
        """The compressed bzImage (QEMU q35/pc ``-kernel``)."""
        return self.directory / VMLINUZ

    @property
    def modules_dir(self) -> Path:
        return self.directory / MODULES_DIR

    def module_names(self) -> tuple[str, ...]:
        """Module names in the order they must be loaded (dependencies first)."""
        order = self.modules_dir / MODULE_ORDER
        return tuple(line for line in order.read_text().split() if line)


def kernel_version_for(release: str) -> str:
    """The seed-style version directory name of a kernel release (``6.1.0-56-cloud-amd64``)."""
    return f"{VERSION_PREFIX}{release}"


def default_kernels_dir() -> Path:
    """Where provisioning puts kernels when no HOST_KERNELS_DIR is given."""
    return cache_dir() / "kernels"


def resolve_vmlinux(kernels_dir: Path, version: str, arch: str) -> Path:
    """The seed's lookup: ``{version}/{arch}/vmlinux.bin``, else legacy ``{version}/vmlinux.bin``."""
    candidates = (kernels_dir / version / arch / VMLINUX, kernels_dir / version / VMLINUX)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise GuestError(
        f"kernel {version} for {arch} not found: looked for {candidates[0]} and {candidates[1]}; "
        "provision it (ember.guest.provision_kernel) or set HOST_KERNELS_DIR"
    )


def open_kernel(kernels_dir: Path, version: str, arch: str) -> GuestKernel:
    """A provisioned kernel, checked to have the bzImage and modules QEMU boots need."""
    kernel = GuestKernel(version, arch, kernels_dir / version / arch)
    missing = [p for p in (kernel.vmlinuz_path, kernel.modules_dir / MODULE_ORDER) if not p.is_file()]
    if missing:
        raise GuestError(
            f"kernel {version} for {arch} is incomplete: {', '.join(map(str, missing))} missing; "
            "provision it with ember.guest.provision_kernel"
        )
    return kernel


def provision_kernel(
    kernels_dir: Path | None = None,
    arch: str | None = None,
    *,
    package: str | None = None,
    deb_cache: Path | None = None,
) -> GuestKernel:
    """Make ``{kernels_dir}/{version}/{arch}`` from Debian's cloud kernel, once.

    ``arch`` defaults to TARGET_ARCH, else the host's. ``package`` defaults to what
    ``linux-image-cloud-<arch>`` depends on today, so a later ``apt-get update`` may bring a
    new version directory; builds that must keep their kernel pin the version and use
    ``open_kernel``. When the stamp is present nothing is downloaded or unpacked. The
    directory appears complete or not at all (built under a temporary name, then renamed).
    """
    kernels_dir = kernels_dir or default_kernels_dir()
    arch = arch or os.environ.get("TARGET_ARCH") or host_arch()
    deb_cache = deb_cache or cache_dir() / "debs"
    package = package or resolve_kernel_package(arch)
    release = package.removeprefix("linux-image-")
    kernel = GuestKernel(kernel_version_for(release), arch, kernels_dir / kernel_version_for(release) / arch)
    stamp = _read_stamp(kernel.directory / STAMP)
    if stamp is not None and stamp.get("modules") == list(GUEST_MODULES):
        return open_kernel(kernels_dir, kernel.version, arch)
    deb = download_deb(package, arch, ensure_dir(deb_cache))
    parent = ensure_dir(kernel.directory.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{arch}.", dir=parent))
    try:
        _unpack_kernel(deb, release, staging)
        record = {"package": package, "deb": deb.name, "modules": list(GUEST_MODULES)}
        (staging / STAMP).write_text(json.dumps(record) + "\n")
        staging.chmod(0o755)
        if stamp is not None:  # provisioned with another module set: replace it
            retired = Path(tempfile.mkdtemp(prefix=f".{arch}.retired.", dir=parent))
            os.rename(kernel.directory, retired / arch)
            discard(retired)
        publish(staging, kernel.directory)
    except BaseException:
        discard(staging)
        raise
    return open_kernel(kernels_dir, kernel.version, arch)


def _read_stamp(path: Path) -> dict[str, object] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def resolve_kernel_package(arch: str) -> str:
    """The concrete ``linux-image-<release>`` package the cloud meta-package points at today."""
    meta = f"linux-image-cloud-{arch}"
    out = _run(["apt-cache", "depends", meta], f"look up {meta}")
    for line in out.splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-"):
            return name.split(":")[0]
    raise GuestError(
        f"apt-cache knows no kernel behind {meta}: run `apt-get update` (scripts/setup.sh does) and retry"
    )


def download_deb(package: str, arch: str, deb_cache: Path) -> Path:
    """``apt-get download`` ``package`` into ``deb_cache`` unless a .deb of it is already there."""
    existing = sorted(deb_cache.glob(f"{package}_*_{arch}.deb"))
    if existing:
        return existing[-1]
    staging = Path(tempfile.mkdtemp(prefix=".download.", dir=deb_cache))
    try:
        _run(
            ["apt-get", "download", "-q", f"{package}:{arch}"],
            f"download {package}",
            cwd=staging,
            writes_to=deb_cache,
        )
        debs = list(staging.glob("*.deb"))
        if len(debs) != 1:
            raise GuestError(f"apt-get download {package} produced {len(debs)} .deb files, expected 1")
        return publish(debs[0], deb_cache / debs[0].name)
    finally:
        discard(staging)


def _unpack_kernel(deb: Path, release: str, target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="ember-deb-", dir=target.parent) as scratch:
        root = Path(scratch)
        _run(["dpkg", "-x", str(deb), str(root)], f"unpack {deb.name}", writes_to=target.parent)
        bzimage = root / "boot" / f"vmlinuz-{release}"
        if not bzimage.is_file():
            raise GuestError(f"{deb.name} has no boot/vmlinuz-{release}: is it a linux-image package?")
        try:
            shutil.copyfile(bzimage, target / VMLINUZ)
            (target / VMLINUX).write_bytes(extract_vmlinux(bzimage.read_bytes()))
            _copy_modules(root / "lib" / "modules" / release, target / MODULES_DIR)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise GuestError(
                f"cannot unpack {deb.name}: the disk is full ({exc.strerror}); free space under "
                f"{target.parent} (EMBER_CACHE_DIR, HOST_KERNELS_DIR) and retry"
            ) from exc


def _copy_modules(module_root: Path, target: Path) -> None:
    available = {p.name.removesuffix(".ko").replace("-", "_"): p for p in module_root.rglob("*.ko")}
    builtin_file = module_root / "modules.builtin"
    builtin = {
        Path(line).name.removesuffix(".ko").replace("-", "_")
        for line in (builtin_file.read_text().split() if builtin_file.is_file() else [])
    }
    depends = {name: _module_depends(path) for name, path in available.items()}
    order = load_order(GUEST_MODULES, depends, builtin)
    target.mkdir()
    for name in order:
        shutil.copyfile(available[name], target / f"{name}.ko")
    (target / MODULE_ORDER).write_text("".join(f"{name}\n" for name in order))


def load_order(
    wanted: Iterable[str], depends: dict[str, tuple[str, ...]], builtin: set[str]
) -> tuple[str, ...]:
    """``wanted`` plus their dependencies, each after everything it depends on.

    Built-in modules are dropped (nothing to load). The result is deterministic: among
    modules that are ready at the same time, the order of ``wanted`` and then of the
    dependency lists decides.
    """
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in builtin or name in order:
            return
        if name in visiting:
            raise GuestError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in depends:
            raise GuestError(
                f"kernel module {name} is neither a .ko file nor built in "
                f"(needed by {chain[-1] if chain else 'the guest'}); use a Debian cloud kernel"
            )
        visiting.add(name)
        for dependency in depends[name]:
            visit(dependency, (*chain, name))
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name, ())
    return tuple(order)


def _module_depends(path: Path) -> tuple[str, ...]:
    out = _run(["modinfo", "-F", "depends", str(path)], f"read the dependencies of {path.name}")
    return tuple(name.replace("-", "_") for name in out.strip().split(",") if name)


def _run(argv: list[str], action: str, cwd: Path | None = None, writes_to: Path | None = None) -> str:
    """``argv``'s stdout; a failure as a GuestError that says what to do (``writes_to``: where it writes)."""
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise GuestError(
            f"cannot {action}: {argv[0]} is not installed; run scripts/setup.sh (Debian packages apt, kmod)"
        ) from exc
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
        full = [line for line in detail if _DISK_FULL.search(line)]
        if full:
            raise GuestError(
                f"cannot {action}: the disk is full ({full[0].strip()}); free space under "
                f"{writes_to or cache_dir()} (EMBER_CACHE_DIR, HOST_KERNELS_DIR) and retry"
            )
        raise GuestError(
            f"cannot {action}: `{' '.join(argv)}` exited {done.returncode}: "
            f"{detail[-1] if detail else 'no output'}; run `apt-get update` and check network access"
        )
    return done.stdout

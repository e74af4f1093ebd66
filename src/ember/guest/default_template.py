"""The default template root: Debian bookworm ``minbase`` with what the agent needs, built once.

``debootstrap --variant=minbase --include=python3-minimal,libpython3-stdlib,iproute2,procps``
from the mirror apt is configured with (``/etc/apt/sources.list*``), then trimmed of what no
guest reads (docs, man and info pages, translations, apt's package lists and downloads,
logs, and the build host's /etc/hostname and /etc/resolv.conf). Debian byte-compiles only
part of the standard library at install time; the rest is compiled here by the guest's own
python3, because a guest compiling ``http.server`` on every cold boot under TCG costs
seconds. Cached as::

    {cache}/templates/debian-bookworm-{key}/
      rootfs/          the root filesystem
      manifest.json    suite, variant, packages, arch, mirror, recipe version,
                       build_seconds, size_bytes, files

``key`` = the first 16 hex digits of sha256 over the suite, variant, packages, host
architecture and ``_RECIPE_VERSION`` (bump it when the build or trim steps change), so a
changed recipe builds a new directory and never reuses a stale one. The directory is built
under a temporary name and renamed into place: it is whole or absent. debootstrap needs
root.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ember.environment import host_arch
from ember.errors import GuestError
from ember.guest.cache import cache_dir, discard, ensure_dir, publish

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("python3-minimal", "libpython3-stdlib", "iproute2", "procps")
ROOTFS_DIR = "rootfs"
MANIFEST = "manifest.json"
_RECIPE_VERSION = 2
_EMPTIED = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
)
_REMOVED = ("etc/hostname", "etc/resolv.conf")
_RECREATED = ("var/cache/apt/archives/partial", "var/lib/apt/lists/partial")
_APT_DIR = Path("/etc/apt")


def default_template_path(cache_root: Path | None = None) -> Path:
    """Where the default template's root directory is (or will be, once built)."""
    recipe = json.dumps(
        [SUITE, VARIANT, PACKAGES, host_arch(), _RECIPE_VERSION, _EMPTIED, _REMOVED], separators=(",", ":")
    )
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    return (cache_root or cache_dir()) / "templates" / f"debian-{SUITE}-{key}" / ROOTFS_DIR


def default_template_rootfs(*, mirror: str | None = None, cache_root: Path | None = None) -> Path:
    """The cached default root directory, built first (~35 s, ~120 MiB) when absent.

    ``mirror`` defaults to the URI apt uses for the suite. Raises GuestError when not run
    as root, when debootstrap is missing, or when the mirror cannot be reached.
    """
    rootfs = default_template_path(cache_root)
    final = rootfs.parent
    if (final / MANIFEST).is_file():
        return rootfs
    if os.geteuid() != 0:
        raise GuestError(
            f"building the default template ({final}) needs root for debootstrap: run as root once"
        )
    mirror = mirror or apt_mirror(SUITE)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=ensure_dir(final.parent)))
    try:
        started = time.monotonic()
        _debootstrap(staging / ROOTFS_DIR, mirror)
        _trim(staging / ROOTFS_DIR)
        _compile_stdlib(staging / ROOTFS_DIR)
        size_bytes, files = _usage(staging / ROOTFS_DIR)
        manifest = {
            "suite": SUITE,
            "variant": VARIANT,
            "packages": list(PACKAGES),
            "arch": host_arch(),
            "mirror": mirror,
            "recipe_version": _RECIPE_VERSION,
            "build_seconds": round(time.monotonic() - started, 1),
            "size_bytes": size_bytes,
            "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        staging.chmod(0o755)
        publish(staging, final)
    except BaseException:
        _discard_unmounted(staging)
        raise
    return rootfs


def apt_mirror(suite: str, apt_dir: Path = _APT_DIR) -> str:
    """The first ``deb`` URI apt is configured with for ``suite`` (one-line and deb822 files)."""
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in files:
        for line in _read_lines(path):
            words = line.split("#", 1)[0].split()
            if words[:1] == ["deb"] and len(words) >= 3:
                words = [w for w in words[1:] if not (w.startswith("[") or w.endswith("]") or "=" in w)]
                if len(words) >= 2 and words[1] == suite:
                    return words[0]
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in "\n".join(_read_lines(path)).split("\n\n"):
            fields = _deb822(stanza)
            if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
                uris = fields.get("uris", "").split()
                if uris and fields.get("enabled", "yes").lower() != "no":
                    return uris[0]
    raise GuestError(
        f"apt has no 'deb' source for Debian {suite} in {apt_dir}/sources.list*: add one, or pass mirror="
    )


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise GuestError(f"cannot read apt source list {path}: {exc}") from exc


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in stanza.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line[0].isspace() and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
    return fields


def _debootstrap(target: Path, mirror: str) -> None:
    argv = ["debootstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}"]
    argv += [SUITE, str(target), mirror]
    env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    except FileNotFoundError as exc:
        raise GuestError(
            "debootstrap is not installed: run scripts/setup.sh (Debian package debootstrap)"
        ) from exc
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).strip().splitlines()
        errors = [line for line in lines if line.startswith("E:")]
        detail = errors[-1] if errors else (lines[-1] if lines else f"exit {done.returncode}")
        raise GuestError(
            f"debootstrap of Debian {SUITE} from {mirror} failed: {detail}; "
            "check network access to the mirror (or pass another mirror=)"
        )


def _compile_stdlib(root: Path) -> None:
    libraries = sorted(str(Path("/") / p.relative_to(root)) for p in (root / "usr/lib").glob("python3.*"))
    argv = ["chroot", str(root), "python3", "-m", "compileall", "-q", *libraries]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise GuestError(
            f"byte-compiling the template's python failed: {detail[-1] if detail else 'no output'}; "
            "rebuild the template (remove its directory)"
        )


def _trim(root: Path) -> None:
    for relative in _EMPTIED:
        directory = root / relative
        for entry in directory.iterdir() if directory.is_dir() else ():
            discard(entry)
    for relative in _REMOVED:
        (root / relative).unlink(missing_ok=True)
    for relative in _RECREATED:
        (root / relative).mkdir(parents=True, exist_ok=True)


def _usage(root: Path) -> tuple[int, int]:
    """(bytes allocated, entries) under ``root``, each hard-linked inode counted once."""
    seen: set[int] = set()
    allocated = entries = 0
    for directory, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            info = os.lstat(os.path.join(directory, name))
            entries += 1
            if info.st_ino not in seen:
                seen.add(info.st_ino)
                allocated += info.st_blocks * 512
    return allocated, entries


def _discard_unmounted(staging: Path) -> None:
    """Remove a failed build, after detaching anything debootstrap left mounted inside it.

    A removal must never descend into a mount (a bind-mounted /dev would take the host's
    device nodes with it), so when a mount cannot be detached the directory is left.
    """
    prefix = f"{staging}/"
    for _ in range(2):
        mounts = sorted((m for m in _mount_points() if m.startswith(prefix)), key=len, reverse=True)
        for mount_point in mounts:
            subprocess.run(["umount", "-l", mount_point], capture_output=True, check=False)
    if any(m.startswith(prefix) for m in _mount_points()):
        raise GuestError(
            f"mounts remain under the failed template build {staging}: unmount them and remove it"
        )
    shutil.rmtree(staging, ignore_errors=True)


def _mount_points() -> list[str]:
    with open("/proc/self/mounts") as mounts:
        fields = [line.split()[1] for line in mounts]
    return [field.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\") for field in fields]

"""A busybox initramfs that loads a Debian kernel's virtio modules and boots the root disk.

Contents (newc cpio, gzip'd; every entry owned by root, mtime 0, so equal inputs give
equal bytes)::

    /init                    the script below (INIT_SCRIPT)
    /bin/busybox             busybox-static; /bin/<applet> symlinks for every applet
    /dev/console             char 5:1, so the kernel can give /init a console before devtmpfs
    /lib/modules/<m>.ko      the kernel's modules; modules.order lists them dependencies-first
    /proc /sys /newroot      mount points

newc entry (all numbers 8 ASCII hex digits)::

    "070701" ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
    namesize check | name NUL, padded to 4 | data, padded to 4      ... "TRAILER!!!" entry last

/init honours from the kernel command line: ``root=`` (default /dev/vda), ``rootfstype=``
(default ext4), ``rootflags=`` (appended to the mount options, e.g. the seed's
``rootflags=discard``), ``ro`` and ``init=`` (default /sbin/init). It prints
``EMBER-INITRAMFS-OK`` just before ``switch_root``; on any failure it prints
``EMBER-INITRAMFS-FAIL: <what>`` and powers off, so a broken guest ends instead of hanging.

Built images are cached as ``{cache}/initramfs/{sha256 of the inputs}.cpio.gz``.
"""

from __future__ import annotations

import gzip
import hashlib
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ember.errors import GuestError
from ember.guest.cache import cache_dir, discard, ensure_dir, publish
from ember.guest.kernel import MODULE_ORDER, GuestKernel

DEFAULT_BUSYBOX = Path("/bin/busybox")
OK_MARKER = "EMBER-INITRAMFS-OK"
FAIL_MARKER = "EMBER-INITRAMFS-FAIL"

INIT_SCRIPT = f"""#!/bin/busybox sh
# ember initramfs: load the virtio modules, mount the root disk, hand over to its init.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {{ echo "{FAIL_MARKER}: $*"; poweroff -f; sleep 10; }}
for module in $(cat /lib/modules/{MODULE_ORDER}); do
    insmod "/lib/modules/$module.ko" || fail "insmod $module"
done
root=/dev/vda; rootfstype=ext4; rootflags=; mode=rw; init=/sbin/init
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root="${{arg#root=}}" ;;
        rootfstype=*) rootfstype="${{arg#rootfstype=}}" ;;
        rootflags=*) rootflags="${{arg#rootflags=}}" ;;
        init=*) init="${{arg#init=}}" ;;
        ro) mode=ro ;;
    esac
done
tries=0
while [ ! -b "$root" ]; do
    tries=$((tries + 1))
    [ "$tries" -gt 200 ] && fail "root device $root did not appear"
    sleep 0.05
done
mount -t "$rootfstype" -o "$mode${{rootflags:+,$rootflags}}" "$root" /newroot || fail "mount $root"
[ -x "/newroot$init" ] || [ -L "/newroot$init" ] || fail "no executable $init on $root"
if [ -d /newroot/dev ]; then mount --move /dev /newroot/dev; else umount /dev; fi
umount /proc /sys
echo "{OK_MARKER} root=$root init=$init"
exec switch_root /newroot "$init"
"""

_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class _Entry:
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def build_initramfs(
    kernel: GuestKernel, *, busybox: Path = DEFAULT_BUSYBOX, cache_root: Path | None = None
) -> Path:
    """The cached initramfs for ``kernel``'s modules, built first if absent.

    ``busybox`` must be a static binary (busybox-static): the initramfs has no libc.
    """
    entries = _entries(kernel, busybox)
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(f"{entry.name}\0{entry.mode:o}\0{entry.rdev}\0{len(entry.data)}\0".encode())
        digest.update(entry.data)
    directory = ensure_dir((cache_root or cache_dir()) / "initramfs")
    final = directory / f"{digest.hexdigest()}.cpio.gz"
    if final.is_file():
        return final
    temporary = Path(tempfile.mkstemp(prefix=".initramfs.", dir=directory)[1])
    try:
        temporary.write_bytes(gzip.compress(_pack_newc(entries), compresslevel=6, mtime=0))
        temporary.chmod(0o644)
        return publish(temporary, final)
    except BaseException:
        discard(temporary)
        raise


def _entries(kernel: GuestKernel, busybox: Path) -> list[_Entry]:
    try:
        busybox_bytes = busybox.read_bytes()
        names = kernel.module_names()
        modules = [(name, (kernel.modules_dir / f"{name}.ko").read_bytes()) for name in names]
    except OSError as exc:
        raise GuestError(
            f"cannot read the initramfs inputs: {exc}; install busybox-static and provision the kernel"
        ) from exc
    directory = stat.S_IFDIR | 0o755
    entries = [
        _Entry(name, directory) for name in ("bin", "dev", "lib", "lib/modules", "newroot", "proc", "sys")
    ]
    entries.append(_Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(_Entry("init", stat.S_IFREG | 0o755, INIT_SCRIPT.encode()))
    entries.append(_Entry("bin/busybox", stat.S_IFREG | 0o755, busybox_bytes))
    entries.extend(
        _Entry(f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox")
        for applet in busybox_applets(busybox)
        if applet != "busybox"
    )
    entries.append(
        _Entry(f"lib/modules/{MODULE_ORDER}", stat.S_IFREG | 0o644, "".join(f"{n}\n" for n in names).encode())
    )
    entries.extend(_Entry(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, data) for name, data in modules)
    return entries


def busybox_applets(busybox: Path) -> tuple[str, ...]:
    """The applet names ``busybox`` provides (``busybox --list``), sorted."""
    try:
        done = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise GuestError(f"cannot run {busybox} --list: {exc}; install busybox-static") from exc
    return tuple(sorted(name for name in done.stdout.split() if name and "/" not in name))


def _pack_newc(entries: list[_Entry]) -> bytes:
    """``entries`` as an uncompressed newc archive, trailer included."""
    out = bytearray()
    for inode, entry in enumerate([*entries, _Entry(_TRAILER, 0)], start=1):
        name = entry.name.encode() + b"\0"
        fields = (
            inode if entry.name != _TRAILER else 0,
            entry.mode,
            0,
            0,
            2 if stat.S_ISDIR(entry.mode) else 1,
            0,
            len(entry.data),
            0,
            0,
            entry.rdev[0],
            entry.rdev[1],
            len(name),
            0,
        )
        out += b"070701" + "".join(f"{value:08x}" for value in fields).encode() + name
        out += b"\0" * (-len(out) % 4)
        out += entry.data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)

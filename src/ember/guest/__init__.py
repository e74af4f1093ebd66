"""Guest assembly for QEMU and Firecracker: kernel, initramfs and ext4 root filesystems.

Everything is made from Debian packages (linux-image-*-cloud, busybox-static, e2fsprogs)
and cached under ``EMBER_CACHE_DIR`` (default /var/cache/ember) between runs.
"""

from ember.guest.bzimage import extract_vmlinux
from ember.guest.cache import CACHE_DIR_ENV, cache_dir
from ember.guest.initramfs import FAIL_MARKER, OK_MARKER, build_initramfs, busybox_applets
from ember.guest.kernel import (
    GUEST_MODULES,
    GuestKernel,
    default_kernels_dir,
    load_order,
    open_kernel,
    provision_kernel,
    resolve_kernel_package,
    resolve_vmlinux,
)
from ember.guest.rootfs import EXT4_FEATURES, busybox_rootfs, make_ext4

__all__ = [
    "CACHE_DIR_ENV",
    "EXT4_FEATURES",
    "FAIL_MARKER",
    "GUEST_MODULES",
    "OK_MARKER",
    "GuestKernel",
    "build_initramfs",
    "busybox_applets",
    "busybox_rootfs",
    "cache_dir",
    "default_kernels_dir",
    "extract_vmlinux",
    "load_order",
    "make_ext4",
    "open_kernel",
    "provision_kernel",
    "resolve_kernel_package",
    "resolve_vmlinux",
]

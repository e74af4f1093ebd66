"""Guest assembly for QEMU and Firecracker: kernel, initramfs and ext4 root filesystems.

Everything is made from Debian packages (linux-image-*-cloud, busybox-static, e2fsprogs,
debootstrap for the default template's root) and cached under ``EMBER_CACHE_DIR``
(default /var/cache/ember) between runs.
"""

from ember.guest.bzimage import extract_vmlinux
from ember.guest.cache import CACHE_DIR_ENV, cache_dir
from ember.guest.default_template import apt_mirror, default_template_path, default_template_rootfs
from ember.guest.guest_init import (
    ENVD_PATH,
    ENVD_PORT,
    GUEST_INIT_PATH,
    GUEST_INIT_SCRIPT,
    READY_MARKER,
)
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
from ember.guest.template import assemble_template_image, required_disk_mb, rootfs_from_tar

__all__ = [
    "CACHE_DIR_ENV",
    "ENVD_PATH",
    "ENVD_PORT",
    "EXT4_FEATURES",
    "FAIL_MARKER",
    "GUEST_INIT_PATH",
    "GUEST_INIT_SCRIPT",
    "GUEST_MODULES",
    "OK_MARKER",
    "READY_MARKER",
    "GuestKernel",
    "apt_mirror",
    "assemble_template_image",
    "build_initramfs",
    "busybox_applets",
    "busybox_rootfs",
    "cache_dir",
    "default_kernels_dir",
    "default_template_path",
    "default_template_rootfs",
    "extract_vmlinux",
    "load_order",
    "make_ext4",
    "open_kernel",
    "provision_kernel",
    "required_disk_mb",
    "resolve_kernel_package",
    "resolve_vmlinux",
    "rootfs_from_tar",
]

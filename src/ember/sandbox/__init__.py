"""Sandbox lifecycle: what a running sandbox is made of, and the steps that create, resume and pause it."""

from ember.sandbox.rootfs import (
    CheckResult,
    ServedRootfs,
    check_ext4,
    mounted,
    store_image_build,
    verify_journals,
)

__all__ = ["CheckResult", "ServedRootfs", "check_ext4", "mounted", "store_image_build", "verify_journals"]

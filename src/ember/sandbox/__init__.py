"""Sandbox lifecycle: one ``Sandbox`` object with an explicit state, run in a process of its own.

``Node`` holds a host's shared machinery (storage, slots, sandbox processes, build cache);
``Sandbox.resume`` / ``Sandbox.boot`` start a sandbox, ``pause`` / ``checkpoint`` / ``kill``
end or snapshot it. create-build, resume-build and the orchestrator daemon all drive these.
"""

from ember.sandbox.cleanup import Reclaimed, reclaim_orphans
from ember.sandbox.create import CreateOptions, CreateReport, check_options, create_build
from ember.sandbox.errors import BuildNotFound, SandboxError, SandboxGone, SandboxStateError, TargetTaken
from ember.sandbox.node import Node
from ember.sandbox.records import (
    ArtifactBuilds,
    BuildInfo,
    SandboxEvent,
    SchedulingInfo,
    StartReport,
    UsageReport,
    VmmKind,
)
from ember.sandbox.resume import load_build_info, open_read_storage, read_build_metadata, save_prefetch
from ember.sandbox.rootfs import (
    CheckResult,
    ServedRootfs,
    check_ext4,
    mounted,
    store_image_build,
    verify_journals,
)
from ember.sandbox.sandbox import (
    FINAL_STATES,
    BootOptions,
    PauseResult,
    ResumeOptions,
    Sandbox,
    SandboxState,
    new_access_token,
    new_sandbox_id,
)

__all__ = [
    "FINAL_STATES",
    "ArtifactBuilds",
    "BootOptions",
    "BuildInfo",
    "BuildNotFound",
    "CheckResult",
    "CreateOptions",
    "CreateReport",
    "Node",
    "PauseResult",
    "Reclaimed",
    "ResumeOptions",
    "Sandbox",
    "SandboxError",
    "SandboxEvent",
    "SandboxGone",
    "SandboxState",
    "SandboxStateError",
    "SchedulingInfo",
    "ServedRootfs",
    "StartReport",
    "TargetTaken",
    "UsageReport",
    "VmmKind",
    "check_ext4",
    "check_options",
    "create_build",
    "load_build_info",
    "mounted",
    "new_access_token",
    "new_sandbox_id",
    "open_read_storage",
    "read_build_metadata",
    "reclaim_orphans",
    "save_prefetch",
    "store_image_build",
    "verify_journals",
]

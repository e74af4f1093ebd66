"""The records that cross between a sandbox's owner and its sandbox process, and what they report.

Everything here is a frozen dataclass of plain values (paths, UUIDs, strings, numbers), so
it pickles across the pipe to the sandbox process and means the same on both sides. The
owner decides *what* (which build, which slot, which token); the sandbox process does it.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ember.build import TemplateMetadata
from ember.header import NIL_UUID, Header
from ember.vmm.qemu import SavedMachine

SCHEDULING_BUILDS_LIMIT = 128
"""At most this many builds per artifact in scheduling metadata, as the original caps it."""


class VmmKind(enum.StrEnum):
    """Which VMM wrote a build's snapfile: it decides which driver resumes it."""

    QEMU = "qemu"
    FIRECRACKER = "firecracker"


@dataclass(frozen=True)
class BuildInfo:
    """What every resume of a build needs before the sandbox process opens its headers.

    ``snapfile`` is a local file (the object itself for a local store, else a cached
    download); ``machine`` is the QEMU machine a QEMU snapfile describes (None for
    Firecracker, whose snapfile describes itself).
    """

    build_id: uuid.UUID
    metadata: TemplateMetadata
    vmm: VmmKind
    snapfile: Path
    machine: SavedMachine | None
    memory_bytes: int
    vcpu_count: int
    rootfs_bytes: int


@dataclass(frozen=True)
class Workspace:
    """A sandbox's places on the host: scratch files (COW caches, RAM, diffs) and sockets.

    ``socket_dir`` is short (under $TMPDIR): unix socket paths are capped at 108 bytes.
    Both carry owner records (``ember.owner``), so what a killed process left is reclaimed.
    """

    work_dir: Path
    socket_dir: Path


@dataclass(frozen=True)
class GuestIdentity:
    """What envd is told on ``/init``: the token every later request must carry, and env vars."""

    access_token: str
    env_vars: Mapping[str, str] = field(default_factory=dict)
    default_user: str | None = None
    default_workdir: str | None = None


@dataclass(frozen=True)
class ResumeSpec:
    """Resume ``build`` in ``slot``: the sandbox process's half of ``Sandbox.resume``."""

    sandbox_id: str
    build: BuildInfo
    workspace: Workspace
    identity: GuestIdentity
    prefetch: bool = True
    wait_for_envd: bool = True
    envd_timeout_s: float = 10.0


@dataclass(frozen=True)
class BootSpec:
    """Cold-boot a guest whose disk is an overlay over ``base_rootfs`` (a build's rootfs)."""

    sandbox_id: str
    base_rootfs: uuid.UUID
    workspace: Workspace
    identity: GuestIdentity
    vcpu_count: int
    memory_mib: int
    hugepages: bool
    kernel_version: str | None = None
    envd_timeout_s: float = 120.0


@dataclass(frozen=True)
class PauseSpec:
    """Snapshot into ``build_id`` (already claimed); ``metadata`` is the child's, minus the VMM version.

    ``filesystem_only`` keeps the rootfs diff alone: the build can only be cold-booted, but
    costs no memory export, memfile or snapfile (the original's filesystem-only pause).
    """

    build_id: uuid.UUID
    metadata: TemplateMetadata
    sync_guest: bool = True
    filesystem_only: bool = False


@dataclass(frozen=True)
class ArtifactBuilds:
    """The builds one artifact's header reads from, with the bytes it reads from each."""

    base_build_id: uuid.UUID
    build_ids: tuple[uuid.UUID, ...]
    build_bytes: tuple[int, ...]
    dropped_builds: int = 0


@dataclass(frozen=True)
class SchedulingInfo:
    """The original's ``SchedulingMetadata``: which builds a sandbox reads, for cache-aware placement."""

    build_id: uuid.UUID
    memfile: ArtifactBuilds | None
    rootfs: ArtifactBuilds


def artifact_builds(header: Header) -> ArtifactBuilds:
    """Bytes of the device each build supplies, most first, capped at ``SCHEDULING_BUILDS_LIMIT``."""
    table = header.mappings
    totals = np.bincount(table.build_index, weights=table.lengths, minlength=len(table.builds))
    ranked = sorted(
        ((int(total), build) for build, total in zip(table.builds, totals, strict=True) if build != NIL_UUID),
        key=lambda item: (-item[0], str(item[1])),
    )
    ranked = [item for item in ranked if item[0] > 0]
    kept = ranked[:SCHEDULING_BUILDS_LIMIT]
    return ArtifactBuilds(
        base_build_id=header.metadata.base_build_id,
        build_ids=tuple(build for _, build in kept),
        build_bytes=tuple(total for total, _ in kept),
        dropped_builds=len(ranked) - len(kept),
    )


def scheduling_info(build_id: uuid.UUID, memfile: Header | None, rootfs: Header) -> SchedulingInfo:
    return SchedulingInfo(
        build_id, artifact_builds(memfile) if memfile is not None else None, artifact_builds(rootfs)
    )


@dataclass(frozen=True)
class StartReport:
    """How a start went: where the time was spent, and what the sandbox reads."""

    prepare_s: float
    restore_s: float
    init_s: float
    scheduling: SchedulingInfo

    @property
    def total_s(self) -> float:
        return self.prepare_s + self.restore_s + self.init_s


@dataclass(frozen=True)
class PauseReport:
    """A finished pause: the new build (complete: its metadata.json is stored) and its headers."""

    build_id: uuid.UUID
    duration_s: float
    memfile_header: Header | None
    rootfs_header: Header
    scheduling: SchedulingInfo
    metadata: TemplateMetadata


@dataclass(frozen=True)
class UsageReport:
    """A running sandbox's own figures, for metrics and ``get_metrics``."""

    memory_read_bytes: int
    memory_written_bytes: int
    faults_served: int
    rootfs_written_bytes: int
    disk_failures: int
    chunks_fetched: int = 0
    """4 MiB chunks this sandbox's process fetched from remote storage (0 for a local store)."""


@dataclass(frozen=True)
class SandboxEvent:
    """One lifecycle step of one sandbox, for logs and progress: ``name`` is stable, ``message`` is prose."""

    sandbox_id: str
    name: str
    message: str
    fields: Mapping[str, str | int | float] = field(default_factory=dict)


EventSink = Callable[[SandboxEvent], None]


def discard_events(event: SandboxEvent) -> None:
    """The sink of a caller that does not follow progress."""

"""What the control plane keeps: teams, keys, templates and their builds, sandboxes, snapshots.

Frozen records, the same for every store backend. A ``SandboxSpec`` is what a sandbox runs
with and keeps across pauses (the original keeps it in its snapshot's config): the running
sandbox's row and its paused snapshot's row both carry one.

Template ids in a spec:

* ``base_template_id``: the template the user created the sandbox from (``templateID`` in
  every answer, as the original's);
* ``template_id``: the template the build belongs to: the base template for a fresh sandbox,
  the sandbox's own snapshot template once it was paused (a new id at its first pause).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_CONCURRENT_SANDBOXES = 20
DEFAULT_MAX_LENGTH_HOURS = 24


class BuildStatus(enum.StrEnum):
    WAITING = "waiting"
    BUILDING = "building"
    READY = "ready"
    ERROR = "error"


class TemplateKind(enum.StrEnum):
    """``template``: registered (``-template``) or built (``POST /v3/templates``); ``snapshot``: a
    named checkpoint of a sandbox (``POST /sandboxes/{id}/snapshots``)."""

    TEMPLATE = "template"
    SNAPSHOT = "snapshot"


@dataclass(frozen=True)
class Team:
    id: str
    name: str
    max_concurrent_sandboxes: int = DEFAULT_MAX_CONCURRENT_SANDBOXES
    max_length_hours: int = DEFAULT_MAX_LENGTH_HOURS
    blocked: bool = False

    @property
    def max_length_s(self) -> int:
        return self.max_length_hours * 3600


@dataclass(frozen=True)
class ApiKey:
    id: str
    team_id: str
    name: str
    mask: str
    created_at: dt.datetime


@dataclass(frozen=True)
class Build:
    """One build of a template: the machine it was made for and where its build stands.

    A build made through the template build endpoints also records the node building it,
    the build it starts from (``fromTemplate``: kept by gc while this one builds), the tags
    it takes once ready (``default`` makes it the template's current build), and why it
    failed (``reason``, ``reason_step``: the SDK's name of the step).
    """

    build_id: str
    template_id: str
    status: BuildStatus
    vcpu: int
    ram_mb: int
    disk_mb: int
    envd_version: str
    created_at: dt.datetime
    kernel_version: str = ""
    firecracker_version: str = ""
    finished_at: dt.datetime | None = None
    node: str | None = None
    from_build_id: str | None = None
    tags: tuple[str, ...] = ()
    reason: str | None = None
    reason_step: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in (BuildStatus.READY, BuildStatus.ERROR)


@dataclass(frozen=True)
class TemplateTag:
    """A tag naming one build of a template (``name:tag``); ``default`` is the current build."""

    tag: str
    build_id: str
    created_at: dt.datetime


@dataclass(frozen=True)
class Template:
    """A template; ``build_id`` is its current build (None until one is ready)."""

    id: str
    team_id: str
    kind: TemplateKind
    public: bool
    build_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    aliases: tuple[str, ...] = ()
    source_sandbox_id: str | None = None
    spawn_count: int = 0
    last_spawned_at: dt.datetime | None = None


@dataclass(frozen=True)
class SandboxSpec:
    """What a sandbox runs with (see the module docstring for the two template ids).

    ``network`` is the API's ``SandboxNetworkConfig`` as accepted (egress proxy password
    included: the database is trusted, answers never show it). Env vars are not kept: the
    original does not send them again on resume either (they live on in the guest's memory).
    """

    team_id: str
    template_id: str
    base_template_id: str
    build_id: str
    vcpu: int
    ram_mb: int
    disk_mb: int
    envd_version: str
    max_length_hours: int
    alias: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    kernel_version: str = ""
    firecracker_version: str = ""
    secure: bool = True
    allow_internet_access: bool | None = None
    network: Mapping[str, Any] = field(default_factory=dict)
    auto_pause: bool = False
    auto_pause_filesystem_only: bool = False
    auto_resume: bool = False
    auto_resume_timeout_s: int = 0

    @property
    def allow_public_traffic(self) -> bool:
        return bool(self.network.get("allowPublicTraffic", True))


@dataclass(frozen=True)
class SandboxRecord:
    """A running sandbox: where it runs and until when."""

    sandbox_id: str
    spec: SandboxSpec
    node: str
    client_id: str
    execution_id: str
    started_at: dt.datetime
    end_at: dt.datetime
    scheduling_metadata: bytes = b""
    """The node's ``SchedulingMetadata`` from Create (serialized): the builds the sandbox reads."""


@dataclass(frozen=True)
class SnapshotRecord:
    """A paused sandbox: the build it resumes from (``spec.build_id``) and where it was paused."""

    sandbox_id: str
    spec: SandboxSpec
    origin_node: str
    started_at: dt.datetime
    paused_at: dt.datetime
    filesystem_only: bool = False
    scheduling_metadata: bytes = b""
    """The node's ``SchedulingMetadata`` from Pause (serialized): the builds a resume reads."""

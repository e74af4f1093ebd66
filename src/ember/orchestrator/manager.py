"""The node's sandboxes as E2B's control plane sees them: create, update, list, delete, pause, checkpoint.

This is the orchestrator's logic without the wire: requests arrive as ``CreateRequest`` records
(the servicer in ``service`` converts the protobuf messages), refusals leave as
``OrchestratorError`` carrying the gRPC status the original answers with. Each sandbox is a
``Sandbox`` of the node's ``Node``; what the control plane told us about it (its config, start
and end time, execution id) is kept beside it in a ``Managed`` record.

Node limits, as the original's (``orchestrator/pkg/server/sandboxes.go``):

* ``max_sandboxes`` running at once (200): RESOURCE_EXHAUSTED beyond;
* ``max_starting`` starts at once (3): a fresh create is refused with RESOURCE_EXHAUSTED at
  once (the API places it on another node), a resume of a paused sandbox waits its turn;
* a sandbox asking for more memory or disk than the whole node has: RESOURCE_EXHAUSTED.

A sandbox whose VM dies is failed by the node's monitor; it leaves ``list`` at once and is
logged. ``end_time`` is kept (``Update``) but not enforced: the control plane's evictor is.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from ember.build import TemplateInfo
from ember.errors import BuildError, EmberError, UsageError
from ember.network import EgressPolicy
from ember.network.egress import DEFAULT_EGRESS
from ember.orchestrator.host import disk_usage, memory_usage
from ember.sandbox import (
    BootOptions,
    BuildNotFound,
    Node,
    PauseResult,
    ResumeOptions,
    Sandbox,
    SandboxGone,
    SandboxState,
    SandboxStateError,
    SchedulingInfo,
    TargetTaken,
    VmmKind,
    read_build_metadata,
)
from ember.vmm.firecracker import resolve_firecracker

_log = logging.getLogger(__name__)

SANDBOX_ID = re.compile(r"[a-z0-9]{1,64}")
"""The ids the proxies route (``^[a-z0-9]+$``, E2B's rule), bounded so names stay sane."""
MAX_SANDBOXES = 200
MAX_STARTING = 3
RESUME_QUEUE_TIMEOUT_S = 60.0
_T = TypeVar("_T")


class OrchestratorError(EmberError):
    """A request the node refuses or could not do; ``code`` is the gRPC status it answers with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class CreateRequest:
    """``SandboxService/Create``, in ember's terms (see ``service.create_request``)."""

    sandbox_id: str
    build_id: str
    template_id: str = ""
    snapshot: bool = False
    filesystem_boot: bool = False
    env_vars: Mapping[str, str] = field(default_factory=dict)
    envd_access_token: str | None = None
    vcpu: int = 0
    ram_mb: int = 0
    total_disk_size_mb: int = 0
    team_id: str = ""
    execution_id: str = ""
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    egress: EgressPolicy = DEFAULT_EGRESS
    traffic_access_token: str | None = None
    mask_request_host: str | None = None
    config: bytes = b""
    """The request's ``SandboxConfig``, serialized, echoed by ``List`` (its deprecated ``config``)."""


@dataclass
class Managed:
    """A sandbox of this node and what the control plane said about it."""

    sandbox: Sandbox
    request: CreateRequest
    start_time: dt.datetime
    end_time: dt.datetime
    vcpu: int
    ram_mb: int


@dataclass(frozen=True)
class Created:
    """What ``Create`` answers: the node's client id, the builds the sandbox reads, how it started."""

    client_id: str
    scheduling: SchedulingInfo
    filesystem_boot_applied: bool
    start_s: float


class SandboxManager:
    """The node's sandboxes (see the module docstring); every method is thread-safe."""

    def __init__(
        self,
        node: Node,
        client_id: str,
        *,
        max_sandboxes: int = MAX_SANDBOXES,
        max_starting: int = MAX_STARTING,
    ) -> None:
        self.node = node
        self.client_id = client_id
        self.max_sandboxes = max_sandboxes
        self.max_starting = max_starting
        self._lock = threading.Lock()
        self._entries: dict[str, Managed] = {}
        self._reserved: set[str] = set()
        self._starting = threading.BoundedSemaphore(max_starting)
        self.starts = 0
        self.start_failures = 0
        self.pauses = 0

    # -- create ------------------------------------------------------------------------------

    def create(self, request: CreateRequest) -> Created:
        """Start the sandbox (resume its build, or boot its rootfs); refusals as the original's."""
        build_id = _check_ids(request.sandbox_id, request.build_id)
        self._reserve(request.sandbox_id)
        try:
            self._take_start_turn(request.snapshot)
            try:
                started = time.monotonic()
                sandbox, vcpu, ram_mb = self._start(request, build_id)
                elapsed = time.monotonic() - started
            finally:
                self._starting.release()
        except BaseException:
            with self._lock:
                self._reserved.discard(request.sandbox_id)
                self.start_failures += 1
            raise
        now = dt.datetime.now(dt.UTC)
        managed = Managed(
            sandbox,
            request,
            start_time=request.start_time or now,
            end_time=request.end_time or now,
            vcpu=vcpu,
            ram_mb=ram_mb,
        )
        with self._lock:
            self._reserved.discard(request.sandbox_id)
            self._entries[request.sandbox_id] = managed
            self.starts += 1
        assert sandbox.started is not None
        return Created(self.client_id, sandbox.started.scheduling, request.filesystem_boot, elapsed)

    def _reserve(self, sandbox_id: str) -> None:
        with self._lock:
            if sandbox_id in self._entries or sandbox_id in self._reserved:
                raise OrchestratorError(
                    grpc.StatusCode.ALREADY_EXISTS, f"sandbox {sandbox_id} already exists on this node"
                )
            if len(self._entries) + len(self._reserved) >= self.max_sandboxes:
                raise OrchestratorError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this node runs its maximum of {self.max_sandboxes} sandboxes: place it on another node",
                )
            self._reserved.add(sandbox_id)

    def _take_start_turn(self, resume: bool) -> None:
        """A fresh create is refused when ``max_starting`` starts run; a resume waits for a turn."""
        if (
            self._starting.acquire(timeout=RESUME_QUEUE_TIMEOUT_S)
            if resume
            else self._starting.acquire(False)
        ):
            return
        raise OrchestratorError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"this node is already starting {self.max_starting} sandboxes: retry or place it elsewhere",
        )

    def _start(self, request: CreateRequest, build_id: uuid.UUID) -> tuple[Sandbox, int, int]:
        if request.filesystem_boot:
            return self._boot(request, build_id)
        try:
            build = self.node.build_info(build_id)
        except BuildNotFound as exc:
            raise OrchestratorError(grpc.StatusCode.NOT_FOUND, str(exc)) from exc
        except BuildError as exc:
            raise OrchestratorError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from exc
        ram_mb = build.memory_bytes >> 20
        if build.vmm is VmmKind.FIRECRACKER:
            self._require_firecracker(build_id, build.metadata.template.firecracker_version)
        _require_match("vcpu", request.vcpu, build.vcpu_count, build_id)
        _require_match("ram_mb", request.ram_mb, ram_mb, build_id)
        if request.total_disk_size_mb and request.total_disk_size_mb < build.rootfs_bytes >> 20:
            raise OrchestratorError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"total_disk_size_mb {request.total_disk_size_mb} is smaller than build {build_id}'s "
                f"{build.rootfs_bytes >> 20} MB rootfs",
            )
        self._require_node_room(ram_mb, request.total_disk_size_mb)
        options = ResumeOptions(
            build_id,
            sandbox_id=request.sandbox_id,
            access_token=request.envd_access_token,
            env_vars=dict(request.env_vars),
            egress=request.egress,
        )
        sandbox = _guarded(lambda: Sandbox.resume(self.node, options))
        return sandbox, build.vcpu_count or request.vcpu, ram_mb

    def _boot(self, request: CreateRequest, build_id: uuid.UUID) -> tuple[Sandbox, int, int]:
        """``filesystem_boot``: a cold boot from the build's rootfs alone, fresh memory.

        The build's own metadata.json still counts: its context (user, workdir, environment) is
        what its commands ran with, so the booted guest's defaults are the same, and a pause of
        the booted sandbox records it again (a filesystem-only snapshot keeps its template's).
        """
        vcpu = request.vcpu or 2
        ram_mb = request.ram_mb or 512
        self._require_node_room(ram_mb, request.total_disk_size_mb)
        metadata = _guarded(lambda: read_build_metadata(self.node.storage, build_id))
        context = metadata.context
        options = BootOptions(
            base_rootfs=build_id,
            vcpu_count=vcpu,
            memory_mib=ram_mb,
            metadata=metadata.same_version_template(TemplateInfo("", metadata.template.kernel_version, "")),
            sandbox_id=request.sandbox_id,
            access_token=request.envd_access_token,
            env_vars={**context.env_vars, **request.env_vars},
            default_user=context.user or None,
            default_workdir=context.workdir or None,
            egress=request.egress,
        )
        return _guarded(lambda: Sandbox.boot(self.node, options)), vcpu, ram_mb

    def _require_node_room(self, ram_mb: int, disk_mb: int) -> None:
        """Refuse a sandbox bigger than the whole node, which no wait would make room for here."""
        disks = disk_usage([self.node.env.orchestrator_base_path])
        node = {
            "ram_mb": memory_usage().total_bytes >> 20,
            "total_disk_size_mb": disks[0].total_bytes >> 20 if disks else 0,
        }
        for field_name, asked in (("ram_mb", ram_mb), ("total_disk_size_mb", disk_mb)):
            if node[field_name] and asked > node[field_name]:
                raise OrchestratorError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{field_name} {asked} is more than this node has ({node[field_name]} MB): "
                    "place the sandbox on a larger node",
                )

    def _require_firecracker(self, build_id: uuid.UUID, version: str) -> None:
        env = self.node.env
        try:
            resolve_firecracker(env.firecracker_versions_dir, version, env.target_arch)
        except EmberError as exc:
            raise OrchestratorError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"build {build_id} was made with Firecracker {version}, which this node cannot run: {exc}",
            ) from exc

    # -- the others --------------------------------------------------------------------------

    def get(self, sandbox_id: str) -> Managed:
        with self._lock:
            managed = self._entries.get(sandbox_id)
        if managed is None or managed.sandbox.state in (SandboxState.FAILED, SandboxState.STOPPED):
            self._forget_ended()
            raise OrchestratorError(
                grpc.StatusCode.NOT_FOUND, f"sandbox {sandbox_id} is not running on this node"
            )
        return managed

    def find(self, sandbox_id: str) -> Managed | None:
        """The running sandbox ``sandbox_id``, or None (cheap: the proxy asks on every request)."""
        with self._lock:
            managed = self._entries.get(sandbox_id)
        return managed if managed is not None and managed.sandbox.state is SandboxState.RUNNING else None

    def running(self) -> list[Managed]:
        """The live sandboxes; ended ones are dropped here (a dead VM leaves the list at once)."""
        self._forget_ended()
        with self._lock:
            return [m for m in self._entries.values() if m.sandbox.state is SandboxState.RUNNING]

    def _forget_ended(self) -> None:
        with self._lock:
            ended = [key for key, m in self._entries.items() if m.sandbox.state in _ENDED]
            for key in ended:
                managed = self._entries.pop(key)
                if managed.sandbox.state is SandboxState.FAILED:
                    _log.warning("sandbox %s failed: %s", key, managed.sandbox.failure)

    def update(self, sandbox_id: str, end_time: dt.datetime | None, egress: EgressPolicy | None) -> None:
        managed = self.get(sandbox_id)
        if end_time is not None:
            managed.end_time = end_time
        if egress is not None:
            _guarded(lambda: managed.sandbox.update_egress(egress))
            managed.request = dataclasses.replace(managed.request, egress=egress)

    def delete(self, sandbox_id: str) -> None:
        managed = self.get(sandbox_id)
        managed.sandbox.kill()
        with self._lock:
            self._entries.pop(sandbox_id, None)

    def pause(self, sandbox_id: str, build_id: str, filesystem_only: bool = False) -> PauseResult:
        managed = self.get(sandbox_id)
        target = _parse_build_id(build_id)
        try:
            result = _guarded(lambda: managed.sandbox.pause(target, filesystem_only=filesystem_only))
        finally:
            if managed.sandbox.state is not SandboxState.RUNNING:
                with self._lock:
                    self._entries.pop(sandbox_id, None)
        with self._lock:
            self.pauses += 1
        return result

    def checkpoint(self, sandbox_id: str, build_id: str) -> PauseResult:
        managed = self.get(sandbox_id)
        target = _parse_build_id(build_id)
        result = _guarded(lambda: managed.sandbox.checkpoint(target))
        with self._lock:
            self.pauses += 1
        return result

    def kill_all(self) -> None:
        """Kill every sandbox of the node (the daemon stopping)."""
        with self._lock:
            entries = list(self._entries.values())
        for managed in entries:
            try:
                managed.sandbox.kill()
            except EmberError as exc:
                _log.warning("killing sandbox %s failed: %s", managed.sandbox.id, exc)


_ENDED = frozenset({SandboxState.FAILED, SandboxState.STOPPED, SandboxState.PAUSED})


def _check_ids(sandbox_id: str, build_id: str) -> uuid.UUID:
    if not SANDBOX_ID.fullmatch(sandbox_id):
        raise OrchestratorError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"sandbox_id {sandbox_id!r} is not valid: use 1-64 lower-case letters and digits",
        )
    return _parse_build_id(build_id)


def _parse_build_id(build_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(build_id)
    except ValueError:
        raise OrchestratorError(
            grpc.StatusCode.INVALID_ARGUMENT, f"build_id {build_id!r} is not a build id: expected a UUID"
        ) from None


def _require_match(field_name: str, asked: int, built: int, build_id: uuid.UUID) -> None:
    """A snapshot's machine is fixed: a request may leave a field at 0, or repeat the build's value."""
    if asked and built and asked != built:
        raise OrchestratorError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{field_name} {asked} does not match build {build_id}, whose snapshot has {built}: "
            "a snapshot resumes with the machine it was taken on",
        )


def _guarded(call: Callable[[], _T]) -> _T:
    """Run a library call; its ember errors as the gRPC statuses the control plane expects."""
    try:
        return call()
    except OrchestratorError:
        raise
    except SandboxStateError as exc:
        raise OrchestratorError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from exc
    except BuildNotFound as exc:
        raise OrchestratorError(grpc.StatusCode.NOT_FOUND, str(exc)) from exc
    except UsageError as exc:
        raise OrchestratorError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
    except TargetTaken as exc:
        raise OrchestratorError(grpc.StatusCode.ALREADY_EXISTS, str(exc)) from exc
    except BuildError as exc:
        raise OrchestratorError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from exc
    except SandboxGone as exc:
        raise OrchestratorError(grpc.StatusCode.ABORTED, f"the sandbox ended: {exc}") from exc
    except EmberError as exc:
        raise OrchestratorError(grpc.StatusCode.INTERNAL, str(exc)) from exc

"""``Sandbox``: one sandbox's lifecycle, the single implementation behind create-build, resume-build
and the daemon.

States and what moves between them::

    resume()/boot() -> STARTING --ok--> RUNNING --pause()------> PAUSING ------> PAUSED
                           |               |  \\--checkpoint()--> SNAPSHOTTING --> RUNNING
                           |               |--kill()--> KILLING --> STOPPED
                           '--failure------'--its VM dies, a call fails--> FAILED

PAUSED, STOPPED and FAILED are final: the sandbox process has exited, its slot and
workspace are released, and ``wait`` returns. A paused sandbox lives on as its build.

Calls are serialized: one runs at a time, the next waits for it. A call in a state that
does not allow it raises ``SandboxStateError`` naming the state. ``kill`` waits at most
``KILL_WAIT_S`` for a running call, then ends the sandbox process by signal: a stuck
operation never makes a sandbox unkillable.

The guest itself runs in a sandbox process of its own (``worker``); this object is its
owner's handle: it picks the slot, the token and the workspace, claims pause targets, and
keeps the state. ``envd`` talks to the guest's agent with the sandbox's token.
"""

from __future__ import annotations

import enum
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from ember.build import TemplateInfo, TemplateMetadata
from ember.envd.client import EnvdClient
from ember.errors import EmberError, ObjectNotFound
from ember.guest import ENVD_PORT
from ember.header import Header
from ember.memory import PageAccesses
from ember.network import EgressPolicy, Slot
from ember.network.egress import DEFAULT_EGRESS
from ember.sandbox.cleanup import create_workspace, remove_workspace
from ember.sandbox.errors import BuildNotFound, SandboxGone, SandboxStateError
from ember.sandbox.node import Node
from ember.sandbox.records import (
    BootSpec,
    GuestIdentity,
    PauseReport,
    PauseSpec,
    ResumeSpec,
    SandboxEvent,
    SchedulingInfo,
    StartReport,
    UsageReport,
    Workspace,
)
from ember.sandbox.worker import WorkerClient

KILL_WAIT_S = 10.0
SANDBOX_ID_BYTES = 10


class SandboxState(enum.Enum):
    """Where a sandbox is in its lifecycle (see the module docstring)."""

    STARTING = "starting"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    SNAPSHOTTING = "snapshotting"
    KILLING = "killing"
    STOPPED = "stopped"
    FAILED = "failed"


FINAL_STATES = frozenset({SandboxState.PAUSED, SandboxState.STOPPED, SandboxState.FAILED})


def new_sandbox_id() -> str:
    """A fresh id of lower-case letters and digits (the original's id alphabet)."""
    return secrets.token_hex(SANDBOX_ID_BYTES)


def new_access_token() -> str:
    """A random envd access token: every request to the guest's agent must carry it."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ResumeOptions:
    """Resume ``build_id``; ids and tokens default to fresh random ones."""

    build_id: uuid.UUID
    sandbox_id: str | None = None
    access_token: str | None = None
    env_vars: Mapping[str, str] = field(default_factory=dict)
    prefetch: bool = True
    wait_for_envd: bool = True
    envd_timeout_s: float | None = None
    """None: the node's ``ENVD_TIMEOUT`` (10 s unless set)."""
    egress: EgressPolicy = DEFAULT_EGRESS


@dataclass(frozen=True)
class BootOptions:
    """Cold-boot a guest over ``base_rootfs``'s rootfs; ``metadata`` is what a pause will record."""

    base_rootfs: uuid.UUID
    vcpu_count: int
    memory_mib: int
    hugepages: bool = False
    metadata: TemplateMetadata = field(default_factory=lambda: TemplateMetadata(version=2))
    sandbox_id: str | None = None
    access_token: str | None = None
    env_vars: Mapping[str, str] = field(default_factory=dict)
    default_user: str | None = None
    default_workdir: str | None = None
    kernel_version: str | None = None
    envd_timeout_s: float = 120.0
    egress: EgressPolicy = DEFAULT_EGRESS


@dataclass(frozen=True)
class PauseResult:
    """A pause that finished: ``build_id`` is a complete build."""

    build_id: uuid.UUID
    duration_s: float
    memfile_header: Header | None
    rootfs_header: Header
    scheduling: SchedulingInfo
    metadata: TemplateMetadata

    @classmethod
    def of(cls, report: PauseReport) -> PauseResult:
        return cls(
            report.build_id,
            report.duration_s,
            report.memfile_header,
            report.rootfs_header,
            report.scheduling,
            report.metadata,
        )


class Sandbox:
    """One sandbox (see the module docstring); make it with ``resume`` or ``boot``."""

    def __init__(
        self,
        node: Node,
        sandbox_id: str,
        identity: GuestIdentity,
        child_metadata: TemplateMetadata,
        build_id: uuid.UUID,
    ) -> None:
        self.node = node
        self.id = sandbox_id
        self.identity = identity
        self.build_id = build_id
        """The build the sandbox runs from: the one it resumed, or the last it checkpointed into."""
        self._child_metadata = child_metadata
        self._state = SandboxState.STARTING
        self._changed = threading.Condition()
        self._lock = threading.Lock()
        self._worker: WorkerClient | None = None
        self._slot: Slot | None = None
        self._workspace: Workspace | None = None
        self._released = False
        self.failure: str | None = None
        self.started: StartReport | None = None
        self.started_at = time.time()

    # -- making ------------------------------------------------------------------------------

    @classmethod
    def resume(cls, node: Node, options: ResumeOptions) -> Sandbox:
        """Resume ``options.build_id`` (RUNNING when this returns); raises the reason it could not."""
        build = node.build_info(options.build_id)
        context = build.metadata.context
        identity = GuestIdentity(
            options.access_token or new_access_token(),
            {**context.env_vars, **options.env_vars},
            default_user=context.user or None,
            default_workdir=context.workdir or None,
        )
        template = build.metadata.template
        child = build.metadata.same_version_template(TemplateInfo("", template.kernel_version, ""))
        sandbox = cls(node, options.sandbox_id or new_sandbox_id(), identity, child, build.build_id)
        try:
            sandbox._start(
                "resume",
                lambda workspace: ResumeSpec(
                    sandbox.id,
                    build,
                    workspace,
                    identity,
                    prefetch=options.prefetch,
                    wait_for_envd=options.wait_for_envd,
                    envd_timeout_s=options.envd_timeout_s or node.env.envd_timeout_s,
                ),
                options.egress,
            )
        except ObjectNotFound as missing:
            # The cached BuildInfo may name a build deleted since (ember gc): asked again, the
            # store answers BuildNotFound for it; a build still there keeps the original error.
            node.forget_build(build.build_id)
            try:
                node.build_info(build.build_id)
            except BuildNotFound:
                raise
            except EmberError:  # the store cannot say now: the start's own error stands
                raise missing from None
            raise
        return sandbox

    @classmethod
    def boot(cls, node: Node, options: BootOptions) -> Sandbox:
        """Cold-boot over a build's rootfs (RUNNING once envd answered /init)."""
        identity = GuestIdentity(
            options.access_token or new_access_token(),
            dict(options.env_vars),
            default_user=options.default_user,
            default_workdir=options.default_workdir,
        )
        sandbox = cls(
            node, options.sandbox_id or new_sandbox_id(), identity, options.metadata, options.base_rootfs
        )
        sandbox._start(
            "boot",
            lambda workspace: BootSpec(
                sandbox.id,
                options.base_rootfs,
                workspace,
                identity,
                vcpu_count=options.vcpu_count,
                memory_mib=options.memory_mib,
                hugepages=options.hugepages,
                kernel_version=options.kernel_version,
                envd_timeout_s=options.envd_timeout_s,
            ),
            options.egress,
        )
        return sandbox

    def _start(
        self, method: str, spec_for: Callable[[Workspace], ResumeSpec | BootSpec], egress: EgressPolicy
    ) -> None:
        self._emit("starting", f"{method} of {self.build_id}", build_id=str(self.build_id))
        with self._lock:
            try:
                self._workspace = create_workspace(self.node.env, self.id)
                self._worker = self.node.take_worker()
                self._slot = self.node.take_slot(egress)
                self.node.register(self)
                report: StartReport = self._worker.call(
                    method, spec_for(self._workspace), self._slot, on_event=self.node.emit
                )
            except BaseException as exc:
                self._fail(exc)
                raise
            self.started = report
            self._set(SandboxState.RUNNING)
        self._emit(
            "running",
            f"running ({report.total_s * 1000:.1f} ms)",
            build_id=str(self.build_id),
            seconds=round(report.total_s, 4),
            slot=self._slot.idx,
        )

    # -- state -------------------------------------------------------------------------------

    @property
    def metadata(self) -> TemplateMetadata:
        """What a pause of this sandbox records in the child's metadata.json (VMM version aside)."""
        return self._child_metadata

    @property
    def state(self) -> SandboxState:
        return self._state

    @property
    def slot(self) -> Slot:
        if self._slot is None:
            raise SandboxStateError(self.id, self._state.value, "reach", (SandboxState.RUNNING.value,))
        return self._slot

    @property
    def envd_url(self) -> str:
        return f"http://{self.slot.host_ip}:{ENVD_PORT}"

    @property
    def envd(self) -> EnvdClient:
        """A client of the guest's envd, carrying the sandbox's access token."""
        return EnvdClient(self.envd_url, access_token=self.identity.access_token)

    def _require(self, action: str, *allowed: SandboxState) -> None:
        if self._state not in allowed:
            raise SandboxStateError(self.id, self._state.value, action, tuple(s.value for s in allowed))

    def _set(self, state: SandboxState) -> None:
        with self._changed:
            self._state = state
            self._changed.notify_all()

    def _emit(self, name: str, message: str, **fields: str | int | float) -> None:
        self.node.emit(SandboxEvent(self.id, name, message, fields))

    def wait(self, timeout_s: float | None = None) -> SandboxState:
        """Block until the sandbox is PAUSED, STOPPED or FAILED and has released everything it held
        (or ``timeout_s`` passed); its state."""
        with self._changed:
            self._changed.wait_for(lambda: self._state in FINAL_STATES and self._released, timeout_s)
            return self._state

    def update_egress(self, egress: EgressPolicy) -> None:
        """Replace the guest's egress rules (one transaction in its slot's namespace)."""
        with self._lock:
            self._require("update the egress of", SandboxState.RUNNING)
            self.node.update_egress(self.slot, egress)

    # -- running -----------------------------------------------------------------------------

    def check(self) -> None:
        """Raise why the sandbox cannot go on (its VM died, its disk or memory failed), if any."""
        self._call("check", "check", SandboxState.RUNNING)

    def usage(self) -> UsageReport:
        report: UsageReport = self._call("usage", "report usage of", SandboxState.RUNNING)
        return report

    def usage_if_idle(self) -> UsageReport | None:
        """``usage`` unless a call is running (a scrape must never wait for a pause); None then."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._state is not SandboxState.RUNNING or self._worker is None:
                return None
            try:
                report: UsageReport = self._worker.call("usage")
            except EmberError:
                return None
            return report
        finally:
            self._lock.release()

    def accesses(self) -> PageAccesses:
        """Guest memory pages read so far, in first-access order (for prefetch data)."""
        pages: PageAccesses = self._call("accesses", "record the accesses of", SandboxState.RUNNING)
        return pages

    def _call(self, method: str, action: str, *allowed: SandboxState) -> Any:
        with self._lock:
            self._require(action, *allowed)
            assert self._worker is not None
            try:
                return self._worker.call(method, on_event=self.node.emit)
            except SandboxGone as exc:
                self._fail(exc)
                raise

    # -- ending ------------------------------------------------------------------------------

    def pause(
        self,
        to_build: uuid.UUID,
        *,
        claimed: bool = False,
        metadata: TemplateMetadata | None = None,
        filesystem_only: bool = False,
    ) -> PauseResult:
        """Snapshot into the new build ``to_build`` and end the sandbox (PAUSED).

        ``claimed`` says the caller already claimed ``to_build`` (``Node.claim``), as a
        command that checks its target before it resumes does; else it is claimed here.
        ``metadata`` replaces what the child build records (a template build's context and
        start commands); by default it is the parent's, as the original's pause keeps it.
        ``filesystem_only`` stores the disk alone (``PauseSpec``): the build is cold-booted later.
        """
        with self._lock:
            self._require("pause", SandboxState.RUNNING)
            assert self._worker is not None
            if not claimed:
                self.node.claim(to_build, f"pause of sandbox {self.id}")
            self._set(SandboxState.PAUSING)
            try:
                report: PauseReport = self._worker.call(
                    "pause",
                    PauseSpec(to_build, metadata or self._child_metadata, filesystem_only=filesystem_only),
                    on_event=self.node.emit,
                )
            except BaseException as exc:
                self._fail(exc)  # the sandbox process is gone: nothing writes the target any more
                # Interrupted (SIGTERM, Ctrl+C) just after the sandbox process stored the build,
                # the pause is still reported as failed: so the build goes too.
                self.node.release_claim(to_build, keep_complete=False)
                raise
            # The build is complete: answer now, and let go of the process, slot and workspace
            # behind the caller's back (``wait`` waits for it; so does ``Node.close``).
            self._set(SandboxState.PAUSED)
            self.node.defer(self._release)
        self._emit(
            "pause-finished",
            f"paused into {to_build} ({report.duration_s * 1000:.0f} ms)",
            build_id=str(to_build),
        )
        return PauseResult.of(report)

    def checkpoint(self, to_build: uuid.UUID, *, claimed: bool = False) -> PauseResult:
        """Snapshot into ``to_build`` and go on running from it (the original's default: resume fresh)."""
        with self._lock:
            self._require("checkpoint", SandboxState.RUNNING)
            assert self._worker is not None
            if not claimed:
                self.node.claim(to_build, f"checkpoint of sandbox {self.id}")
            self._set(SandboxState.SNAPSHOTTING)
            try:
                report, resumed = self._worker.call(
                    "checkpoint", PauseSpec(to_build, self._child_metadata), on_event=self.node.emit
                )
            except BaseException as exc:
                self._fail(exc)
                self.node.release_claim(to_build)
                raise
            self.build_id = to_build
            self.started = resumed
            self._set(SandboxState.RUNNING)
        self._emit("checkpointed", f"checkpointed into {to_build}", build_id=str(to_build))
        return PauseResult.of(report)

    def kill(self) -> None:
        """End the sandbox and release everything it holds (STOPPED); safe in every state."""
        if not self._lock.acquire(timeout=KILL_WAIT_S):
            # A call is stuck: end the process under it; the call then fails and cleans up.
            worker = self._worker
            if worker is not None:
                worker.terminate()
            self._lock.acquire()
        try:
            if self._state in FINAL_STATES:
                return
            self._set(SandboxState.KILLING)
            worker = self._worker
            if worker is not None and worker.alive:
                try:
                    worker.call("kill", on_event=self.node.emit, timeout_s=KILL_WAIT_S * 3)
                except EmberError as exc:
                    self.node.emit(SandboxEvent(self.id, "kill-failed", f"ending it by signal: {exc}"))
            self._release()
            self._set(SandboxState.STOPPED)
        finally:
            self._lock.release()
        self._emit("killed", "killed")

    def close(self) -> None:
        self.kill()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()

    # -- the sandbox process ending on its own -------------------------------------------------

    def process_sentinel(self) -> int | None:
        worker = self._worker
        return worker.sentinel if worker is not None and self._state is SandboxState.RUNNING else None

    def process_exited(self) -> None:
        """The monitor saw the sandbox process exit: fail the sandbox unless a call is handling it."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._state is SandboxState.RUNNING and self._worker is not None:
                self._fail(SandboxGone(self._worker.exit_reason()))
        finally:
            self._lock.release()

    def _fail(self, cause: BaseException) -> None:
        self.failure = str(cause) if isinstance(cause, EmberError) else f"{type(cause).__name__}: {cause}"
        self._release()
        self._set(SandboxState.FAILED)
        self._emit("failed", self.failure)

    def _release(self) -> None:
        """Let go of the process, the slot and the workspace; each once, whatever failed before."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.terminate()
        slot, self._slot = self._slot, None
        if slot is not None:
            try:
                self.node.release_slot(slot)
            except EmberError as exc:
                self.node.emit(
                    SandboxEvent(self.id, "slot-leak", f"cannot release network slot {slot.idx}: {exc}")
                )
        workspace, self._workspace = self._workspace, None
        if workspace is not None:
            found = remove_workspace(workspace)
            for problem in found.problems:
                self.node.emit(SandboxEvent(self.id, "cleanup-problem", problem))
        self.node.unregister(self)
        with self._changed:
            self._released = True
            self._changed.notify_all()

    def describe(self) -> str:
        return f"sandbox {self.id} ({self._state.value}, build {self.build_id})"

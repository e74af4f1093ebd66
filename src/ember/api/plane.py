"""The control plane's shared state and the primitives every operation is made of.

``ControlPlane`` holds the store, the node pool, the catalog of running sandboxes and the
token minter. Its primitives keep three things in step, in this order: the node (gRPC), the
catalog (memory), the store (``sandboxes`` rows). ``start`` places a sandbox and records it;
``kill_live`` ends one; ``extend`` moves its end time (the original's ``KeepAliveFor``).

Two hooks the server fills in: ``gc`` is told whenever builds may stop being used (a template
or snapshot deleted, a paused sandbox killed, a tag removed, a sandbox ended) and collects them
in the background (``ember.api.gc``); ``watch_build`` follows a template build the API started on a node until
it is ready or failed (``ember.api.builds``). Both do nothing until set.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Protocol

from ember.api.catalog import Catalog, LiveSandbox, SandboxState
from ember.api.errors import MAX_LENGTH_EXCEEDED, ApiError, template_not_found
from ember.api.ids import TemplateRef, parse_template_ref
from ember.api.network import network_config
from ember.api.nodes import NodeError, NodePool
from ember.api.placement import CAPACITY_WAIT_S, place
from ember.api.records import Build, BuildStatus, SandboxRecord, SandboxSpec, Team, Template
from ember.api.store import Store, StoreError
from ember.api.tokens import TokenMinter
from ember.rpc import orchestrator_pb2

_log = logging.getLogger(__name__)


DEFAULT_TAG = "default"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Releases(Protocol):
    """Told when builds may have stopped being used (``ember.api.gc.GcService``)."""

    def released(self, why: str) -> None: ...

    def sandbox_ended(self, build_id: str, why: str) -> None: ...


class _NoGc:
    def released(self, why: str) -> None:
        return None

    def sandbox_ended(self, build_id: str, why: str) -> None:
        return None


def _no_watch(build: Build) -> None:
    return None


class ControlPlane:
    """Shared state (see the module docstring). Every method runs on the API's event loop."""

    def __init__(self, store: Store, nodes: NodePool, tokens: TokenMinter, domain: str | None) -> None:
        self.store = store
        self.nodes = nodes
        self.tokens = tokens
        self.domain = domain
        self.catalog = Catalog()
        self.gc: Releases = _NoGc()
        self.watch_build: Callable[[Build], None] = _no_watch
        self.capacity_wait_s = CAPACITY_WAIT_S

    # -- tokens -------------------------------------------------------------------------------

    def envd_token(self, sandbox_id: str, spec: SandboxSpec) -> str | None:
        return self.tokens.envd_token(sandbox_id) if spec.secure else None

    def traffic_token(self, sandbox_id: str, spec: SandboxSpec) -> str | None:
        return None if spec.allow_public_traffic else self.tokens.traffic_token(sandbox_id)

    # -- templates ------------------------------------------------------------------------------

    async def resolve_template(self, team: Team, reference: str) -> tuple[Template, Build]:
        """The template ``[namespace/]name[:tag]`` names for ``team`` (its own, or a public one)
        and the build it runs: the current build, or the one the tag names (a tag may also be
        one of the template's build ids). 404 for an unknown template or tag; 400 when that
        build is not ready (still building, or failed)."""
        ref = parse_template_ref(reference)
        template = await self.store.find_template(ref.name)
        if template is None or (template.team_id != team.id and not template.public):
            raise template_not_found(reference)
        build_id = await self._tagged(template, ref)
        build = await self.store.get_build(build_id) if build_id else None
        if build is None or build.template_id != template.id:
            raise await self._not_ready(template, reference)
        if build.status is not BuildStatus.READY:
            raise ApiError(
                400,
                f'Template "{reference}" cannot start sandboxes: '
                f"its build {build.build_id} is {build.status}",
            )
        return template, build

    async def _tagged(self, template: Template, ref: TemplateRef) -> str | None:
        if ref.tag is None or ref.tag == DEFAULT_TAG:
            return template.build_id
        build_id = await self.store.tagged_build(template.id, ref.tag)
        if build_id is not None:
            return build_id
        try:
            as_build = str(uuid.UUID(ref.tag))
        except ValueError:
            as_build = None
        if as_build is not None:
            build = await self.store.get_build(as_build)
            if build is not None and build.template_id == template.id:
                return as_build
        raise ApiError(404, f'Template "{ref.name}" has no tag "{ref.tag}"')

    async def _not_ready(self, template: Template, reference: str) -> ApiError:
        """Why a template without a current build cannot start sandboxes (400)."""
        builds = await self.store.list_builds(template.id)
        latest = builds[-1] if builds else None
        if latest is None:
            return ApiError(400, f'Template "{reference}" has no build yet: build it first')
        if latest.status is BuildStatus.ERROR:
            return ApiError(
                400,
                f'Template "{reference}" has no ready build: its last build {latest.build_id} failed'
                + (f": {latest.reason}" if latest.reason else ""),
            )
        return ApiError(
            400,
            f'Template "{reference}" has no ready build yet: build {latest.build_id} is {latest.status}; '
            "wait for it to finish",
        )

    # -- start ----------------------------------------------------------------------------------

    async def start(
        self,
        team: Team,
        sandbox_id: str,
        spec: SandboxSpec,
        timeout_s: int,
        *,
        env_vars: Mapping[str, str] | None = None,
        resume: bool = False,
        filesystem_boot: bool = False,
        preferred_node: str | None = None,
    ) -> LiveSandbox:
        """Place the sandbox, then add it to the catalog and the store; raises ApiError.

        The end time counts from when the node answered, so boot time is not charged. A
        sandbox the store cannot record is killed again: an unrecorded one would be killed
        as an orphan by the next API start anyway, and the caller would not know.
        """
        with self.catalog.reserve(team, sandbox_id):
            execution_id = str(uuid.uuid4())
            now = utcnow()
            request = orchestrator_pb2.SandboxCreateRequest(
                sandbox=self._config(sandbox_id, spec, execution_id, env_vars or {}, resume)
            )
            request.start_time.FromDatetime(now)
            request.end_time.FromDatetime(now + dt.timedelta(seconds=timeout_s))
            if filesystem_boot:
                request.filesystem_boot = True
            placed = await place(self.nodes, request, preferred_node, capacity_wait_s=self.capacity_wait_s)
            started = utcnow()
            record = SandboxRecord(
                sandbox_id=sandbox_id,
                spec=spec,
                node=placed.node.address,
                client_id=placed.response.client_id,
                execution_id=execution_id,
                started_at=started,
                end_at=min(started + dt.timedelta(seconds=timeout_s), _max_end(started, spec)),
                scheduling_metadata=placed.response.scheduling_metadata.SerializeToString(),
            )
            live = self.catalog.add(record)
        try:
            await self.store.put_sandbox(record)
        except StoreError:
            self.catalog.remove(sandbox_id)
            await self._delete_quietly(placed.node.address, sandbox_id, "the API could not record it")
            raise
        return live

    def _config(
        self, sandbox_id: str, spec: SandboxSpec, execution_id: str, env_vars: Mapping[str, str], resume: bool
    ) -> orchestrator_pb2.SandboxConfig:
        config = orchestrator_pb2.SandboxConfig(
            template_id=spec.template_id,
            build_id=spec.build_id,
            kernel_version=spec.kernel_version,
            firecracker_version=spec.firecracker_version,
            sandbox_id=sandbox_id,
            env_vars=dict(env_vars),
            metadata=dict(spec.metadata),
            envd_version=spec.envd_version,
            vcpu=spec.vcpu,
            ram_mb=spec.ram_mb,
            team_id=spec.team_id,
            max_sandbox_length=spec.max_length_hours,
            total_disk_size_mb=spec.disk_mb,
            snapshot=resume,
            base_template_id=spec.base_template_id,
            auto_pause=spec.auto_pause,
            execution_id=execution_id,
            auto_pause_filesystem_only=spec.auto_pause_filesystem_only,
        )
        if spec.alias:
            config.alias = spec.alias
        envd_token = self.envd_token(sandbox_id, spec)
        if envd_token is not None:
            config.envd_access_token = envd_token
        if spec.allow_internet_access is not None:
            config.allow_internet_access = spec.allow_internet_access
        config.network.CopyFrom(
            network_config(spec.network, spec.allow_internet_access, self.traffic_token(sandbox_id, spec))
        )
        config.auto_resume.CopyFrom(
            orchestrator_pb2.SandboxAutoResumeConfig(
                policy="any" if spec.auto_resume else "off", timeout_seconds=spec.auto_resume_timeout_s
            )
        )
        return config

    # -- end ------------------------------------------------------------------------------------

    async def kill_live(self, live: LiveSandbox, reason: str) -> None:
        """End a sandbox already moved to KILLING: node first, then catalog and store.

        A node that cannot be reached does not keep the sandbox in the catalog: once the node
        is back, the periodic sync kills what the catalog no longer knows.
        """
        await self._delete_quietly(live.record.node, live.sandbox_id, reason)
        self.catalog.remove(live.sandbox_id)
        await self.store.delete_sandbox(live.sandbox_id)
        self.gc.sandbox_ended(live.record.spec.build_id, f"sandbox {live.sandbox_id} ended ({reason})")

    async def _delete_quietly(self, node_address: str, sandbox_id: str, reason: str) -> None:
        node = self.nodes.get(node_address)
        if node is None:
            return
        try:
            await node.delete(sandbox_id, reason)
        except NodeError as exc:
            _log.warning("killing %s on %s failed (the node sync retries): %s", sandbox_id, node_address, exc)

    async def forget(self, live: LiveSandbox) -> None:
        """Drop a sandbox the node no longer runs (it stopped on its own, or was paused)."""
        self.catalog.remove(live.sandbox_id)
        await self.store.delete_sandbox(live.sandbox_id)
        self.gc.sandbox_ended(live.record.spec.build_id, f"sandbox {live.sandbox_id} ended on its node")

    async def extend(self, live: LiveSandbox, timeout_s: int, allow_shorter: bool) -> dt.datetime:
        """``KeepAliveFor``: end at now + ``timeout_s``, capped at start + the max length.

        ``allow_shorter`` False only ever moves the end later (connect, refresh); True may
        move it earlier (set_timeout), and refuses a sandbox past its max length (400).
        """
        now = utcnow()
        record = live.record
        max_end = _max_end(record.started_at, record.spec)
        if allow_shorter and now >= max_end:
            raise ApiError(400, MAX_LENGTH_EXCEEDED)
        end = min(now + dt.timedelta(seconds=max(timeout_s, 0)), max_end)
        if not allow_shorter and end <= record.end_at:
            return record.end_at
        updated = dataclasses.replace(record, end_at=end)
        self.catalog.update(live.sandbox_id, updated)
        await self.store.put_sandbox(updated)
        node = self.nodes.get(record.node)
        if node is not None:
            try:
                await node.update(live.sandbox_id, end_time=end)
            except NodeError as exc:  # the node only keeps it; the API's evictor enforces it
                _log.info("telling %s the new end time of %s failed: %s", record.node, live.sandbox_id, exc)
        return end

    def running(self, live: LiveSandbox | None, team: Team) -> LiveSandbox | None:
        """``live`` when it is the team's and not being killed; None otherwise."""
        if live is None or live.team_id != team.id or live.state is SandboxState.KILLING:
            return None
        return live


def _max_end(started_at: dt.datetime, spec: SandboxSpec) -> dt.datetime:
    return started_at + dt.timedelta(hours=spec.max_length_hours)

"""``ember api``'s process: the REST API, the edge proxy and the internal gRPC, on one event loop.

::

    REST API        :PORT (3000)                 E2B's REST paths (``app``)
    edge proxy      :EDGE_PORT (3002)            sandbox traffic to the nodes (``edge``); 0 disables
    internal gRPC   :INTERNAL_GRPC_PORT (5009)   proxy.SandboxService/ResumeSandbox (``resume``)
    evictor         timeouts: kill or auto-pause (``lifecycle.Evictor``)
    node sync       every 20 s: ServiceInfo + List of each node (``lifecycle.NodeSync``)
    build watcher   template builds on the nodes, until ready or failed (``builds.BuildWatcher``)
    gc              after deletes, builds nothing uses any more (``gc.GcService``; needs -storage)

Start: open and migrate the database, register ``-template`` builds, load the running
sandboxes the database knows, ask every node what it runs and reconcile (drop what ended,
kill orphans), follow the template builds the database has as building, then open the
ports. Stop: close the ports (requests in flight get a grace period), stop the loops, close
the database. Sandboxes and template builds keep running on their nodes: the next start
finds them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from aiohttp import web

from ember.api.app import DEFAULT_API_PORT, build_app
from ember.api.builds import BuildWatcher
from ember.api.edge import DEFAULT_EDGE_PORT, IDLE_TIMEOUT_S, EdgeProxy
from ember.api.gc import DEFAULT_GC_GRACE_S, GcService
from ember.api.lifecycle import Evictor, NodeSync
from ember.api.nodes import DEFAULT_NODE_PROXY_PORT, DEFAULT_ORCHESTRATOR, NodePool
from ember.api.placement import CAPACITY_WAIT_S
from ember.api.plane import ControlPlane
from ember.api.records import Team
from ember.api.resume import DEFAULT_INTERNAL_GRPC_PORT, ResumeService
from ember.api.store import DEFAULT_DB_URL, Store, open_store
from ember.api.templates import TemplateRegistration, register
from ember.api.tokens import TokenMinter
from ember.errors import UsageError
from ember.rpc import proxy_pb2_grpc
from ember.storage import Storage, open_storage

_log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5.0


@dataclass(frozen=True)
class ApiConfig:
    """How ``ember api`` runs. Ports: 0 picks a free one; None (edge, gRPC) disables it."""

    db_url: str = DEFAULT_DB_URL
    listen: str = "0.0.0.0"
    port: int = DEFAULT_API_PORT
    orchestrators: Sequence[str] = (DEFAULT_ORCHESTRATOR,)
    domain: str | None = None
    node_proxy_port: int = DEFAULT_NODE_PROXY_PORT
    edge_port: int | None = DEFAULT_EDGE_PORT
    internal_grpc_port: int | None = DEFAULT_INTERNAL_GRPC_PORT
    templates: Sequence[TemplateRegistration] = ()
    max_concurrent_sandboxes: int | None = None
    max_length_hours: int | None = None
    storage_url: str | None = None
    """The build storage the nodes use (``-storage``), for gc; None turns gc off."""
    gc_grace_s: float = DEFAULT_GC_GRACE_S
    """gc never deletes a build younger than this (``-gc-grace``)."""
    capacity_wait_s: float = CAPACITY_WAIT_S
    """How long a create waits for a node that is full (starting three sandboxes) before a 503."""


class ApiServer:
    """One ``ember api`` (see the module docstring): ``await start()``, then ``await stop()``."""

    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        self.store: Store | None = None
        self.plane: ControlPlane | None = None
        self.sync: NodeSync | None = None
        self.evictor: Evictor | None = None
        self.edge: EdgeProxy | None = None
        self.gc: GcService | None = None
        self.builds: BuildWatcher | None = None
        self.api_address: tuple[str, int] | None = None
        self.edge_address: tuple[str, int] | None = None
        self.grpc_address: tuple[str, int] | None = None
        self._runners: list[web.AppRunner] = []
        self._grpc: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._nodes: NodePool | None = None

    async def start(self) -> None:
        """Everything in the module docstring's order; on failure, what started is stopped."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        config = self.config
        storage = self._storage()
        store = self.store = await open_store(config.db_url)
        nodes = self._nodes = NodePool(config.orchestrators, config.node_proxy_port)
        team = await self._team(store)
        for registration in config.templates:
            template = await register(store, team, registration)
            _log.info(
                "template %s (%s) runs build %s", registration.alias, template.id, registration.build_id
            )
        plane = self.plane = ControlPlane(store, nodes, TokenMinter(await store.token_seed()), config.domain)
        plane.capacity_wait_s = config.capacity_wait_s
        gc = self.gc = GcService(store, storage, config.gc_grace_s, plane.catalog)
        plane.gc = gc
        watcher = self.builds = BuildWatcher(plane)
        plane.watch_build = watcher.watch
        sync = self.sync = NodeSync(plane)
        loaded = await sync.load()
        await sync.sync()
        following = await watcher.resume()
        _log.info(
            "gc %s; %d template builds in progress",
            f"of {storage.url}, grace {config.gc_grace_s:.0f} s"
            if storage is not None
            else "off (no -storage)",
            following,
        )
        _log.info(
            "%d running sandboxes in the database, %d now; nodes: %s",
            loaded,
            len(plane.catalog),
            ", ".join(
                f"{n.address} ({'healthy' if n.healthy else 'not healthy'})" for n in nodes.nodes.values()
            ),
        )
        # A client that goes away does not cancel an API call half-way (a create would be placed
        # but not recorded); it does cancel the relay of its sandbox traffic.
        self.api_address = await self._serve(build_app(plane), config.port, "REST API", cancel=False)
        if config.edge_port is not None:
            self.edge = EdgeProxy(plane, config.domain)
            self.edge_address = await self._serve(
                self.edge.application(), config.edge_port, "edge proxy", cancel=True
            )
        if config.internal_grpc_port is not None:
            self.grpc_address = await self._serve_grpc(plane, config.internal_grpc_port)
        self.evictor = Evictor(plane)
        self._tasks = [
            asyncio.create_task(self.evictor.run(), name="ember-evictor"),
            asyncio.create_task(sync.run(), name="ember-node-sync"),
        ]

    def _storage(self) -> Storage | None:
        url = self.config.storage_url
        if not url:
            return None
        storage = open_storage(url)
        _log.info("build storage %s (for gc)", storage.url)
        return storage

    async def _team(self, store: Store) -> Team:
        team = await store.default_team()
        limits = (self.config.max_concurrent_sandboxes, self.config.max_length_hours)
        if limits != (None, None):
            await store.set_team_limits(
                team.id,
                limits[0] if limits[0] is not None else team.max_concurrent_sandboxes,
                limits[1] if limits[1] is not None else team.max_length_hours,
            )
            team = await store.default_team()
        return team

    async def _serve(self, app: web.Application, port: int, what: str, cancel: bool) -> tuple[str, int]:
        runner = web.AppRunner(
            app,
            keepalive_timeout=IDLE_TIMEOUT_S,
            handler_cancellation=cancel,
            shutdown_timeout=SHUTDOWN_GRACE_S,
            access_log=None,
        )
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.config.listen, port)
        try:
            await site.start()
        except OSError as exc:
            raise UsageError(
                f"the {what} cannot listen on {self.config.listen}:{port}: {exc}; pick a free port"
            ) from exc
        host, bound = runner.addresses[-1][:2]
        return str(host), int(bound)

    async def _serve_grpc(self, plane: ControlPlane, port: int) -> tuple[str, int]:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        proxy_pb2_grpc.add_SandboxServiceServicer_to_server(ResumeService(plane), server)
        try:
            bound = server.add_insecure_port(f"{self.config.listen}:{port}")
        except RuntimeError as exc:
            raise UsageError(
                f"the internal gRPC cannot listen on {self.config.listen}:{port}: {exc}"
            ) from exc
        if bound == 0:
            raise UsageError(
                f"the internal gRPC cannot listen on {self.config.listen}:{port}: the port is taken"
            )
        await server.start()
        self._grpc = server
        return self.config.listen, bound

    async def stop(self) -> None:
        """Close the ports, stop the loops, close the database; safe to call twice."""
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()
        if self._grpc is not None:
            await self._grpc.stop(SHUTDOWN_GRACE_S)
            self._grpc = None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.evictor is not None:
            await self.evictor.stop()
        if self.builds is not None:
            await self.builds.stop()
        if self.gc is not None:
            await self.gc.stop()
        if self._nodes is not None:
            await self._nodes.close()
            self._nodes = None
        if self.store is not None:
            await self.store.close()
            self.store = None

"""``ember orchestrator``: the node daemon, one process tree per node.

::

    main thread        waits for SIGTERM / SIGINT, then stops everything in order
    gRPC server        :GRPC_PORT (5008)  SandboxService, InfoService, TemplateService,
                                          grpc.health.v1.Health
                       (a thread pool; each call drives the node's library objects)
    asyncio thread     :PROXY_PORT (5007) the node sandbox proxy; the node's own pages
                       /health, /metrics and /upload (template files) answer requests
                       that name no sandbox
    Node               storage, slots, sandbox processes (one per sandbox), build cache, monitor

With remote storage (gs://, s3://) reads go through the node's chunk cache
(SNAPSHOT_CACHE_DIR); every ``CACHE_CHECK_S`` the coldest builds' chunks are evicted while the
cache's file system is fuller than ``cache_disk_target_percent`` (``clean-nfs-cache``'s rule,
with a short grace: a chunk a sandbox has open or mapped stays readable after its unlink).

Start: the node reclaims what a killed predecessor left (its QEMUs, slots, FUSE mounts,
workspaces, sockets) and logs it, then the ports open. Stop (SIGTERM): the health service
turns NOT_SERVING and the servers stop taking requests (calls in flight get ``STOP_GRACE_S``),
every sandbox is killed, the node closes; the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import uuid
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ember.errors import EmberError, UsageError
from ember.orchestrator.manager import MAX_SANDBOXES, MAX_STARTING, SandboxManager
from ember.orchestrator.proxy import DEFAULT_PORT as DEFAULT_PROXY_PORT
from ember.orchestrator.proxy import NodeProxy, ProxyTarget
from ember.orchestrator.service import InfoService, SandboxService
from ember.orchestrator.telemetry import Metrics, log_event
from ember.orchestrator.templates import TemplateService
from ember.rpc import info_pb2_grpc, orchestrator_pb2_grpc, template_manager_pb2_grpc
from ember.sandbox import Node, SandboxEvent, SandboxStateError, UsageReport
from ember.storage import ChunkCache
from ember.storage.cleaner import CleanOptions, clean_cache

_log = logging.getLogger(__name__)

DEFAULT_GRPC_PORT = 5008
STOP_GRACE_S = 10.0
GRPC_WORKERS = 32
CACHE_CHECK_S = 300.0
CACHE_GRACE_S = 3600.0


@dataclass(frozen=True)
class DaemonConfig:
    """How one node daemon runs; every field has the original's default."""

    storage: str
    listen: str = "0.0.0.0"
    grpc_port: int = DEFAULT_GRPC_PORT
    proxy_port: int = DEFAULT_PROXY_PORT
    domain: str | None = None
    node_id: str = ""
    max_sandboxes: int = MAX_SANDBOXES
    max_starting: int = MAX_STARTING
    idle_workers: int = 2
    warm_slots: int = 2
    public_url: str = ""
    """How clients reach this node's proxy port (template file uploads); default from ``listen``."""
    cache_disk_target_percent: float = CleanOptions.disk_usage_target_percent
    """With remote storage: the chunk cache's file system is kept below this much use."""


class _Directory:
    """The proxy's view of the node's sandboxes: where each one's VM is reached, and its token."""

    def __init__(self, manager: SandboxManager) -> None:
        self._manager = manager

    def lookup(self, sandbox_id: str) -> ProxyTarget | None:
        managed = self._manager.find(sandbox_id)
        if managed is None:
            return None
        try:
            host = str(managed.sandbox.slot.host_ip)
        except SandboxStateError:  # it ended between the lookup and now
            return None
        return ProxyTarget(
            sandbox_id=sandbox_id,
            host=host,
            traffic_access_token=managed.request.traffic_access_token,
            mask_request_host=managed.request.mask_request_host,
            run=managed.sandbox,
        )


class Daemon:
    """The running daemon (see the module docstring): ``start``, then ``wait``, then ``stop``."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.node_id = config.node_id or socket.gethostname()
        self.metrics = Metrics()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._proxy: NodeProxy | None = None
        self._server: grpc.Server | None = None
        self._health = health.HealthServicer()
        self.node: Node | None = None
        self.manager: SandboxManager | None = None
        self.grpc_address: tuple[str, int] | None = None
        self.proxy_address: tuple[str, int] | None = None

    def start(self) -> None:
        """Reclaim, then open both ports; raises UsageError when a port is taken."""
        node = Node(
            self.config.storage,
            events=self._on_event,
            idle_workers=self.config.idle_workers,
            warm_slots=self.config.warm_slots,
        )
        self.node = node
        if node.reclaimed.count:  # a previous run was killed: worth a line even at serve's WARNING level
            _log.warning("reclaimed what a previous run left: %s", node.reclaimed.summary())
        manager = SandboxManager(
            node,
            client_id=str(uuid.uuid5(uuid.NAMESPACE_DNS, self.node_id))[:8],
            max_sandboxes=self.config.max_sandboxes,
            max_starting=self.config.max_starting,
        )
        self.manager = manager
        try:
            self._start_grpc(manager)
            self._start_proxy(manager)
        except BaseException:
            self.stop()
            raise
        if isinstance(node.storage, ChunkCache):
            threading.Thread(
                target=self._bound_cache, args=(node.storage.root,), name="cache-bound", daemon=True
            ).start()
        self.metrics.watch(
            running=lambda: len(manager.running()),
            usages=self._usages,
            proxy_outcomes=lambda: self._proxy.counters.snapshot() if self._proxy is not None else {},
        )
        _log.info(
            "orchestrator %s serving: gRPC on %s:%d, sandbox proxy on %s:%d, storage %s",
            self.node_id,
            *(self.grpc_address or ("", 0)),
            *(self.proxy_address or ("", 0)),
            node.storage.url,
        )

    def _bound_cache(self, root: Path) -> None:
        options = CleanOptions(
            disk_usage_target_percent=self.config.cache_disk_target_percent,
            dry_run=False,
            grace_s=CACHE_GRACE_S,
        )
        while not self._stopping.wait(CACHE_CHECK_S):
            try:
                report = clean_cache(root, options)
            except EmberError as exc:
                _log.warning("keeping the chunk cache %s bounded failed: %s", root, exc)
                continue
            if report.deleted:
                _log.info(
                    "chunk cache %s: evicted %d cold builds (~%d MiB)",
                    root,
                    report.deleted,
                    report.bytes_freed_estimate >> 20,
                )

    def _on_event(self, event: SandboxEvent) -> None:
        log_event(event)
        if event.name == "failed":
            self.metrics.failures.inc()

    def _usages(self) -> dict[str, UsageReport]:
        assert self.manager is not None
        reports = {}
        for managed in self.manager.running():
            report = managed.sandbox.usage_if_idle()
            if report is not None:
                reports[managed.sandbox.id] = report
        return reports

    def _start_grpc(self, manager: SandboxManager) -> None:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=GRPC_WORKERS, thread_name_prefix="grpc"),
            options=[("grpc.so_reuseport", 0)],
        )
        orchestrator_pb2_grpc.add_SandboxServiceServicer_to_server(
            SandboxService(manager, self.metrics), server
        )
        info_pb2_grpc.add_InfoServiceServicer_to_server(
            InfoService(manager, self.metrics, self.node_id), server
        )
        self.templates = TemplateService(manager.node, self._public_url)
        template_manager_pb2_grpc.add_TemplateServiceServicer_to_server(self.templates, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            port = server.add_insecure_port(f"{self.config.listen}:{self.config.grpc_port}")
        except RuntimeError as exc:
            raise UsageError(
                f"cannot listen for gRPC on {self.config.listen}:{self.config.grpc_port}: {exc}"
            ) from exc
        if port == 0:
            raise UsageError(
                f"cannot listen for gRPC on {self.config.listen}:{self.config.grpc_port}: the port is taken; "
                "set GRPC_PORT or -grpc-port"
            )
        server.start()
        self._server = server
        self.grpc_address = (self.config.listen, port)
        for service in ("", "SandboxService", "InfoService", "TemplateService"):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def _start_proxy(self, manager: SandboxManager) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._loop_thread = threading.Thread(target=loop.run_forever, name="proxy-loop", daemon=True)
        self._loop_thread.start()
        proxy = NodeProxy(
            _Directory(manager),
            self.config.domain,
            node_routes={
                "/health": self._health_page,
                "/metrics": self._metrics_page,
                "/upload": self._upload,
            },
        )
        self._proxy = proxy
        started = asyncio.run_coroutine_threadsafe(
            proxy.start(self.config.listen, self.config.proxy_port), loop
        )
        try:
            self.proxy_address = started.result()
        except Exception as exc:
            raise UsageError(f"{exc}; set PROXY_PORT or -proxy-port") from exc

    def _public_url(self) -> str:
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        host = self.config.listen if self.config.listen not in ("0.0.0.0", "::") else socket.gethostname()
        port = self.proxy_address[1] if self.proxy_address is not None else self.config.proxy_port
        return f"http://{host}:{port}"

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        return await self.templates.upload(request)

    async def _health_page(self, request: web.Request) -> web.StreamResponse:
        if self._stopping.is_set():
            return web.json_response({"status": "stopping"}, status=503)
        return web.json_response({"status": "healthy", "node_id": self.node_id})

    async def _metrics_page(self, request: web.Request) -> web.StreamResponse:
        body = await asyncio.to_thread(self.metrics.render)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    def wait(self) -> None:
        """Block until SIGTERM or SIGINT (main thread only), then stop."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            _log.info("got %s: stopping", signal.Signals(signum).name)
            self._stopping.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not self._stopping.wait(1.0):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stop()

    def stop(self) -> None:
        """Stop taking requests, kill every sandbox, close the node; safe to call twice."""
        if self._stopped.is_set():
            return
        self._stopping.set()
        self._health.enter_graceful_shutdown()
        if self._server is not None:
            self._server.stop(STOP_GRACE_S).wait()
        if self._proxy is not None and self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._proxy.stop(), self._loop).result(STOP_GRACE_S * 2)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(STOP_GRACE_S)
            self._loop.close()
        if self.manager is not None:
            self.manager.kill_all()
        if self.node is not None:
            self.node.close()
        self._stopped.set()
        _log.info("orchestrator %s stopped", self.node_id)

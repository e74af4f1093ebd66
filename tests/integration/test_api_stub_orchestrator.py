"""A stub orchestrator cluster for the control plane's tests, and the tests of the stub itself.

No VM boots here. Each ``StubNode`` is what ``ember api`` talks to on a real node:

* a real gRPC server (``grpc.server``, threads) serving ember's ``SandboxService``,
  ``InfoService`` and ``TemplateService`` with in-memory behaviour: Create remembers the
  sandbox, Pause and Delete forget it, Checkpoint keeps it; TemplateCreate runs a scripted
  build (``StubTemplates``) that completes after a few status polls, and fails at a RUN step
  whose command is ``false``; every request is recorded for the tests to read;
* the real node sandbox proxy (``ember.orchestrator.proxy.NodeProxy``) over the stub's
  sandboxes, every one of which is "reached" at one stand-in VM: an aiohttp server on a
  random 127.x.y.z address serving envd's port (``/health``, ``/metrics``) and an app port
  (an echo, a controlled stream, a WebSocket echo). Like a real node's, the proxy also
  serves the node's own ``PUT /upload/{scope}/{hash}?token=`` for COPY files, the URL
  ``InitLayerFileUpload`` answers;
* optionally a real build storage: a ready template build and each Pause then write a
  small synthetic build there (``ember.build.gc.synthetic``, real headers over the parent's),
  so the API's gc has real chains to follow.

Every node listens on its own loopback address, so all nodes share one sandbox-proxy port as
real nodes do. ``ApiHarness`` runs ``ember.api.ApiServer`` on its own event loop thread over
a SQLite file; the tests drive it with E2B's SDK from the test thread. Other modules import
these helpers (pytest puts this directory on ``sys.path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import aiohttp
import grpc
import pytest
from aiohttp import web
from google.protobuf import empty_pb2

from ember.api import ApiConfig, ApiServer, TemplateRegistration, open_store
from ember.api.auth import hash_api_key, mask_api_key, new_api_key
from ember.api.records import ApiKey
from ember.build.gc.synthetic import SyntheticBuild, write_synthetic_build
from ember.orchestrator.proxy import NodeProxy, ProxyTarget
from ember.rpc import (
    info_pb2,
    info_pb2_grpc,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    template_manager_pb2,
    template_manager_pb2_grpc,
)
from ember.storage import Storage
from ember.traffic.routing import ENVD_PORT, SANDBOX_ID_HEADER

_T = TypeVar("_T")

APP_PORT = 8080
DOMAIN = "ember.test"
BASE_BUILD = "8d8bf2a4-1c55-4a3a-9f1d-2b4c0e7c3f11"
ENVD_VERSION = "0.5.4"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def loopback_address() -> str:
    """A random 127.x.y.z that nothing else on the machine is likely to use."""
    return f"127.{random.randint(20, 250)}.{random.randint(0, 250)}.{random.randint(2, 250)}"


def wait_until(check: Callable[[], _T], timeout_s: float = 20.0, what: str = "the condition") -> _T:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


class LoopThread:
    """An asyncio loop in a daemon thread; ``run`` a coroutine on it from the test thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout_s: float = 60.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# -- the stand-in VM ---------------------------------------------------------------------------------


@dataclass
class StubVm:
    """The one "VM" behind a stub node: envd's port and an app port, for every sandbox."""

    metrics_enabled: bool = True
    stream_release: threading.Event = field(default_factory=threading.Event)
    seen: list[dict[str, Any]] = field(default_factory=list)

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/stream", self._stream)
        app.router.add_get("/ws", self._websocket)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        return app

    @staticmethod
    def _sandbox_of(request: web.Request) -> str:
        label = request.host.partition(".")[0]
        return request.headers.get(SANDBOX_ID_HEADER) or label.partition("-")[2]

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self.metrics_enabled:
            return web.json_response({"code": 404, "message": "no route GET /metrics"}, status=404)
        return web.json_response(
            {
                "ts": int(time.time()),
                "cpu_count": 2,
                "cpu_used_pct": 12.5,
                "mem_total": 512 << 20,
                "mem_used": 128 << 20,
                "disk_used": 100 << 20,
                "disk_total": 1024 << 20,
                "token": request.headers.get("X-Access-Token"),
            }
        )

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        """One chunk, then the next only once the test has read the first (or 10 s passed)."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        released = await asyncio.to_thread(self.stream_release.wait, 10.0)
        await response.write(b"data: second\n\n" if released else b"data: timed-out\n\n")
        await response.write_eof()
        return response

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"echo:{message.data}")
        return ws

    async def _echo(self, request: web.Request) -> web.Response:
        seen = {
            "sandbox": self._sandbox_of(request),
            "method": request.method,
            "path": request.raw_path,
            "host": request.host,
            "headers": dict(request.headers),
            "body": (await request.read()).decode(errors="replace"),
        }
        self.seen.append(seen)
        return web.json_response(seen)


# -- the stub node ---------------------------------------------------------------------------------


def _abort(context: Any, code: grpc.StatusCode, message: str) -> NoReturn:
    """``context.abort`` (it raises), typed as never returning."""
    context.abort(code, message)
    raise AssertionError("grpc's abort returned")


@dataclass
class StubSandbox:
    config: orchestrator_pb2.SandboxConfig
    start_time: dt.datetime
    end_time: dt.datetime


class _SandboxService(orchestrator_pb2_grpc.SandboxServiceServicer):
    def __init__(self, node: StubNode) -> None:
        self.node = node

    def Create(self, request: Any, context: Any) -> Any:
        node = self.node
        with node.lock:
            node.creates.append(request)
            if node.refuse_creates is not None:
                context.abort(node.refuse_creates, "the stub refuses creates")
            config = request.sandbox
            if config.sandbox_id in node.sandboxes:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"sandbox {config.sandbox_id} exists")
            if len(node.sandboxes) >= node.max_sandboxes:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "the stub node is full")
            node.sandboxes[config.sandbox_id] = StubSandbox(
                config, request.start_time.ToDatetime(dt.UTC), request.end_time.ToDatetime(dt.UTC)
            )
        return orchestrator_pb2.SandboxCreateResponse(
            client_id=node.client_id,
            scheduling_metadata=orchestrator_pb2.SchedulingMetadata(build_id=config.build_id),
            filesystem_boot_applied=request.filesystem_boot,
        )

    def Update(self, request: Any, context: Any) -> Any:
        with self.node.lock:
            self.node.updates.append(request)
            sandbox = self.node.sandboxes.get(request.sandbox_id)
            if sandbox is None:
                _abort(context, grpc.StatusCode.NOT_FOUND, f"sandbox {request.sandbox_id} is not running")
            if request.HasField("end_time"):
                sandbox.end_time = request.end_time.ToDatetime(dt.UTC)
        return empty_pb2.Empty()

    def List(self, request: Any, context: Any) -> Any:
        with self.node.lock:
            return orchestrator_pb2.SandboxListResponse(
                sandboxes=[
                    orchestrator_pb2.RunningSandbox(
                        config=sandbox.config,
                        client_id=self.node.client_id,
                        sandbox_id=sandbox_id,
                        team_id=sandbox.config.team_id,
                        vcpu=sandbox.config.vcpu,
                        ram_mb=sandbox.config.ram_mb,
                    )
                    for sandbox_id, sandbox in self.node.sandboxes.items()
                ]
            )

    def Delete(self, request: Any, context: Any) -> Any:
        with self.node.lock:
            self.node.deletes.append(request)
            if self.node.sandboxes.pop(request.sandbox_id, None) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"sandbox {request.sandbox_id} is not running")
        return empty_pb2.Empty()

    def Pause(self, request: Any, context: Any) -> Any:
        with self.node.lock:
            self.node.pauses.append(request)
            if request.filesystem_only and self.node.refuse_filesystem_only:
                context.abort(grpc.StatusCode.UNIMPLEMENTED, "filesystem-only pauses are not supported")
            sandbox = self.node.sandboxes.pop(request.sandbox_id, None)
            if sandbox is None:
                _abort(context, grpc.StatusCode.NOT_FOUND, f"sandbox {request.sandbox_id} is not running")
        self.node.store_build(
            request.build_id, sandbox.config.build_id, filesystem_only=request.filesystem_only
        )
        return orchestrator_pb2.SandboxPauseResponse(
            scheduling_metadata=orchestrator_pb2.SchedulingMetadata(build_id=request.build_id)
        )

    def Checkpoint(self, request: Any, context: Any) -> Any:
        with self.node.lock:
            self.node.checkpoints.append(request)
            sandbox = self.node.sandboxes.get(request.sandbox_id)
            if sandbox is None:
                _abort(context, grpc.StatusCode.NOT_FOUND, f"sandbox {request.sandbox_id} is not running")
        self.node.store_build(request.build_id, sandbox.config.build_id)
        return orchestrator_pb2.SandboxCheckpointResponse(
            scheduling_metadata=orchestrator_pb2.SchedulingMetadata(build_id=request.build_id)
        )


@dataclass
class StubBuild:
    """One template build the stub runs: its request, its whole log and outcome, the polls so far."""

    request: Any
    entries: list[Any]
    failure: tuple[str, str] | None
    """(message, step) when the script fails."""
    polls: int = 0


def _log_entry(message: str, step: str | None, level: Any = template_manager_pb2.Info) -> Any:
    entry = template_manager_pb2.TemplateBuildLogEntry(
        message=message, level=level, fields={"step": step} if step else {}
    )
    entry.timestamp.FromDatetime(dt.datetime.now(dt.UTC))
    return entry


class StubTemplates(template_manager_pb2_grpc.TemplateServiceServicer):
    """The node's TemplateService, scripted: a build shows ``ENTRIES_PER_POLL`` more log entries
    per status poll and ends (Completed, or Failed at its first ``RUN false``) once all are shown
    and at least ``POLLS_TO_FINISH`` polls came. COPY steps need their files uploaded first."""

    ENTRIES_PER_POLL = 2
    POLLS_TO_FINISH = 3

    def __init__(self, node: StubNode) -> None:
        self.node = node
        self.builds: dict[str, StubBuild] = {}
        self.creates: list[Any] = []
        self.deletes: list[Any] = []
        self.uploads: dict[tuple[str, str], bytes] = {}
        self.upload_token = uuid.uuid4().hex
        self.refuse_creates: grpc.StatusCode | None = None

    def TemplateCreate(self, request: Any, context: Any) -> Any:
        config = request.template
        with self.node.lock:
            self.creates.append(request)
            if self.refuse_creates is not None:
                _abort(context, self.refuse_creates, "the stub refuses template builds")
            if config.buildID in self.builds:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"template build {config.buildID} is known")
            self.builds[config.buildID] = self._script(request)
        return empty_pb2.Empty()

    def _script(self, request: Any) -> StubBuild:
        config = request.template
        if config.WhichOneof("source") == "fromTemplate":
            entries = [_log_entry(f"building from template build {config.fromTemplate.buildID}", "base")]
        else:
            entries = [_log_entry(f"pulling image {config.fromImage}", "base")]
        for index, step in enumerate(config.steps):
            name = str(index + 1)
            entries.append(_log_entry(f"{step.type} {' '.join(step.args)}", name))
            if step.type == "COPY" and (request.cacheScope, step.filesHash) not in self.uploads:
                message = f"step {name} COPY: the files (hash {step.filesHash}) were never uploaded"
                entries.append(_log_entry(message, name, template_manager_pb2.Error))
                return StubBuild(request, entries, (message, name))
            if step.type == "RUN" and step.args and step.args[0] == "false":
                message = f"step {name} RUN 'false' exited with code 1: no output"
                entries.append(_log_entry(message, name, template_manager_pb2.Error))
                return StubBuild(request, entries, (message, name))
            if step.type == "RUN" and step.args and step.args[0].startswith("echo "):
                entries.append(_log_entry(step.args[0].removeprefix("echo "), name))
        entries.append(_log_entry("finalizing the template", "finalize"))
        entries.append(_log_entry(f"template build {config.buildID} is ready", "finalize"))
        return StubBuild(request, entries, None)

    def TemplateBuildStatus(self, request: Any, context: Any) -> Any:
        with self.node.lock:
            build = self.builds.get(request.buildID)
            if build is None:
                _abort(context, grpc.StatusCode.NOT_FOUND, f"template build {request.buildID} is not known")
            build.polls += 1
            shown = build.entries[: build.polls * self.ENTRIES_PER_POLL]
            done = len(shown) == len(build.entries) and build.polls >= self.POLLS_TO_FINISH
        if request.HasField("level"):
            shown = [entry for entry in shown if entry.level >= request.level]
        start = request.offset if request.HasField("offset") else 0
        limit = request.limit if request.HasField("limit") and request.limit else 100
        answer = template_manager_pb2.TemplateBuildStatusResponse(
            status=template_manager_pb2.Building, logEntries=shown[start : start + limit]
        )
        if done and build.failure is not None:
            answer.status = template_manager_pb2.Failed
            answer.reason.CopyFrom(
                template_manager_pb2.TemplateBuildStatusReason(
                    message=build.failure[0], step=build.failure[1]
                )
            )
        elif done:
            config = build.request.template
            parent = config.fromTemplate.buildID if config.WhichOneof("source") == "fromTemplate" else None
            self.node.store_build(config.buildID, parent)
            answer.status = template_manager_pb2.Completed
            answer.metadata.CopyFrom(
                template_manager_pb2.TemplateBuildMetadata(
                    rootfsSizeKey=2048,
                    envdVersionKey="0.6.4",
                    kernelVersion="vmlinux-6.1.158",
                    firecrackerVersion="v1.14.1_431f1fc",
                )
            )
        return answer

    def TemplateBuildDelete(self, request: Any, context: Any) -> Any:
        with self.node.lock:
            self.deletes.append(request)
            if self.builds.pop(request.buildID, None) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"template build {request.buildID} is not known")
        return empty_pb2.Empty()

    def InitLayerFileUpload(self, request: Any, context: Any) -> Any:
        scope = request.cacheScope if request.HasField("cacheScope") else "default"
        with self.node.lock:
            if (scope, request.hash) in self.uploads:
                return template_manager_pb2.InitLayerFileUploadResponse(present=True)
        url = (
            f"http://{self.node.host}:{self.node.proxy_port}/upload/{scope}/{request.hash}"
            f"?token={self.upload_token}"
        )
        return template_manager_pb2.InitLayerFileUploadResponse(present=False, url=url)

    async def upload(self, request: web.Request) -> web.StreamResponse:
        """``PUT /upload/{scope}/{hash}?token=``, as the real node serves it on its proxy port."""
        parts = request.path.strip("/").split("/")
        if request.method != "PUT" or len(parts) != 3:
            return web.json_response({"code": 404, "message": "no such upload"}, status=404)
        if request.query.get("token") != self.upload_token:
            return web.json_response({"code": 403, "message": "the upload token is invalid"}, status=403)
        data = await request.read()
        with self.node.lock:
            self.uploads[(parts[1], parts[2])] = data
        return web.Response(status=200)


class _InfoService(info_pb2_grpc.InfoServiceServicer):
    def __init__(self, node: StubNode) -> None:
        self.node = node

    def ServiceInfo(self, request: Any, context: Any) -> Any:
        with self.node.lock:
            running = list(self.node.sandboxes.values())
        return info_pb2.ServiceInfoResponse(
            node_id=self.node.node_id,
            service_status=self.node.status,
            service_roles=[info_pb2.Orchestrator, info_pb2.TemplateBuilder],
            metric_cpu_count=8,
            metric_cpu_percent=10,
            metric_sandboxes_running=len(running),
            metric_cpu_allocated=sum(s.config.vcpu for s in running),
        )

    def ServiceStatusOverride(self, request: Any, context: Any) -> Any:
        self.node.status = request.service_status
        return empty_pb2.Empty()


class StubNode:
    """One stub orchestrator node (see the module docstring)."""

    def __init__(self, loop: LoopThread, proxy_port: int, name: str, storage: Storage | None = None) -> None:
        self.node_id = name
        self.proxy_port = proxy_port
        self.storage = storage
        self.synthetic: dict[str, SyntheticBuild] = {}
        """Builds this node wrote to ``storage``, by id (the parents of later ones)."""
        self.next_seed = 1000
        """Seeds of the synthetic builds, in the order they are written: the same blocks every run."""
        self.client_id = f"stub-{name}"
        self.lock = threading.Lock()
        self.sandboxes: dict[str, StubSandbox] = {}
        self.creates: list[Any] = []
        self.updates: list[Any] = []
        self.deletes: list[Any] = []
        self.pauses: list[Any] = []
        self.checkpoints: list[Any] = []
        self.refuse_creates: grpc.StatusCode | None = None
        self.refuse_filesystem_only = False
        """Answer filesystem-only pauses UNIMPLEMENTED, as a node that cannot make them does."""
        self.max_sandboxes = 1000
        self.status = info_pb2.Healthy
        self.host = loopback_address()
        self.vm_ip = loopback_address()
        self.vm = StubVm()
        self.templates = StubTemplates(self)
        self._loop = loop
        # The fixed ports first: a port the kernel picks later cannot take one of them.
        self.proxy = NodeProxy(self, DOMAIN, node_routes={"/upload": self.templates.upload})
        loop.run(self.proxy.start(self.host, proxy_port))
        self._vm_runner = loop.run(self._serve_vm())
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)]
        )
        orchestrator_pb2_grpc.add_SandboxServiceServicer_to_server(_SandboxService(self), self._grpc)
        info_pb2_grpc.add_InfoServiceServicer_to_server(_InfoService(self), self._grpc)
        template_manager_pb2_grpc.add_TemplateServiceServicer_to_server(self.templates, self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"{self.host}:0")
        self._grpc.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    async def _serve_vm(self) -> web.AppRunner:
        runner = web.AppRunner(self.vm.application(), shutdown_timeout=0.5, handler_cancellation=True)
        await runner.setup()
        for port in (ENVD_PORT, APP_PORT):
            await web.TCPSite(runner, self.vm_ip, port).start()
        return runner

    def lookup(self, sandbox_id: str) -> ProxyTarget | None:
        """The node proxy's directory: every running stub sandbox lives at the stand-in VM."""
        with self.lock:
            sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            return None
        ingress = sandbox.config.network.ingress
        return ProxyTarget(
            sandbox_id=sandbox_id,
            host=self.vm_ip,
            traffic_access_token=ingress.traffic_access_token
            if ingress.HasField("traffic_access_token")
            else None,
            mask_request_host=ingress.mask_request_host if ingress.HasField("mask_request_host") else None,
        )

    def running(self) -> set[str]:
        with self.lock:
            return set(self.sandboxes)

    def store_build(self, build_id: str, parent_id: str | None, *, filesystem_only: bool = False) -> None:
        """Write a synthetic build over ``parent_id`` (one this node or ``adopt_build`` knows) to
        the storage, as a real node stores a finished template build or a pause; no storage:
        nothing. Seeds follow ``next_seed``, so a test's chains are the same every run."""
        if self.storage is None:
            return
        with self.lock:
            parent = self.synthetic.get(parent_id) if parent_id else None
            if build_id in self.synthetic:
                return
            seed = self.next_seed
            self.next_seed += 1
        written = write_synthetic_build(
            self.storage, uuid.UUID(build_id), parent, seed=seed, filesystem_only=filesystem_only
        )
        with self.lock:
            self.synthetic[build_id] = written

    def adopt_build(self, build: SyntheticBuild) -> None:
        """A build already in the storage (the base template's), as a parent for later ones."""
        with self.lock:
            self.synthetic[str(build.build_id)] = build

    def adopt(self, sandbox_id: str) -> None:
        """A sandbox the control plane never created (an orphan)."""
        now = dt.datetime.now(dt.UTC)
        with self.lock:
            self.sandboxes[sandbox_id] = StubSandbox(
                orchestrator_pb2.SandboxConfig(sandbox_id=sandbox_id, vcpu=1), now, now
            )

    def close(self) -> None:
        self._grpc.stop(0).wait(5)
        self._loop.run(self.proxy.stop())
        self._loop.run(self._vm_runner.cleanup())


class StubCluster:
    """``count`` stub nodes sharing one sandbox-proxy port, on one event loop thread."""

    def __init__(self, count: int = 1, storage: Storage | None = None) -> None:
        self.loop = LoopThread("stub-cluster")
        self.proxy_port = free_port()
        self.storage = storage
        self.nodes = [StubNode(self.loop, self.proxy_port, f"node{index}", storage) for index in range(count)]

    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self.nodes]

    def node(self, address: str) -> StubNode:
        return next(node for node in self.nodes if node.address == address)

    def running(self) -> set[str]:
        return set().union(*(node.running() for node in self.nodes))

    def creates(self) -> list[Any]:
        return [create for node in self.nodes for create in node.creates]

    def template_creates(self) -> list[Any]:
        return [create for node in self.nodes for create in node.templates.creates]

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self.loop.close()


# -- the API under test --------------------------------------------------------------------------


@dataclass
class ApiHarness:
    """``ember api`` over a stub cluster, on its own loop thread, with one API key."""

    cluster: StubCluster
    db_path: Path
    api_key: str = ""
    limits: tuple[int | None, int | None] = (None, None)
    domain: str | None = DOMAIN
    storage_url: str | None = None
    gc_grace_s: float = 24 * 3600.0
    loop: LoopThread = field(default_factory=lambda: LoopThread("ember-api"))
    server: ApiServer | None = None
    ports: tuple[int, int, int] = (0, 0, 0)
    """REST, edge, gRPC: 0 until the first start picks them; a restart binds the same ones."""

    def start(self) -> ApiHarness:
        if not self.api_key:
            self.api_key = self.loop.run(make_api_key(f"sqlite://{self.db_path}"))
        config = ApiConfig(
            db_url=f"sqlite://{self.db_path}",
            listen="127.0.0.1",
            port=self.ports[0],
            orchestrators=self.cluster.addresses,
            domain=self.domain,
            node_proxy_port=self.cluster.proxy_port,
            edge_port=self.ports[1],
            internal_grpc_port=self.ports[2],
            templates=(TemplateRegistration("base", BASE_BUILD, vcpu=2, ram_mb=512, disk_mb=1024),),
            max_concurrent_sandboxes=self.limits[0],
            max_length_hours=self.limits[1],
            storage_url=self.storage_url,
            capacity_wait_s=0.2,
            gc_grace_s=self.gc_grace_s,
        )
        server = ApiServer(config)

        async def start() -> None:
            await server.start()

        self.loop.run(start())
        self.server = server
        assert server.api_address and server.edge_address and server.grpc_address
        self.ports = (server.api_address[1], server.edge_address[1], server.grpc_address[1])
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.loop.run(self.server.stop())
            self.server = None

    def restart(self) -> ApiHarness:
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        self.loop.close()

    @property
    def api_url(self) -> str:
        assert self.server is not None and self.server.api_address is not None
        return f"http://127.0.0.1:{self.server.api_address[1]}"

    @property
    def edge_url(self) -> str:
        assert self.server is not None and self.server.edge_address is not None
        return f"http://127.0.0.1:{self.server.edge_address[1]}"

    @property
    def grpc_target(self) -> str:
        assert self.server is not None and self.server.grpc_address is not None
        return f"127.0.0.1:{self.server.grpc_address[1]}"

    def sdk_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point E2B's SDK at this API, as a user would (environment variables)."""
        monkeypatch.setenv("E2B_API_URL", self.api_url)
        monkeypatch.setenv("E2B_SANDBOX_URL", self.edge_url)
        monkeypatch.setenv("E2B_API_KEY", self.api_key)
        monkeypatch.setenv("E2B_DOMAIN", DOMAIN)
        monkeypatch.delenv("E2B_DEBUG", raising=False)

    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}

    def on_api_loop(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return self.loop.run(coroutine)


async def make_api_key(db_url: str) -> str:
    """What ``ember api-key create`` does."""
    store = await open_store(db_url)
    try:
        team = await store.default_team()
        key = new_api_key()
        record = ApiKey(str(uuid.uuid4()), team.id, "test", mask_api_key(key), dt.datetime.now(dt.UTC))
        await store.add_api_key(record, hash_api_key(key))
        return key
    finally:
        await store.close()


@contextlib.contextmanager
def running_api(
    tmp_path: Path,
    nodes: int = 1,
    limits: tuple[int | None, int | None] = (None, None),
    storage: Storage | None = None,
    storage_url: str | None = None,
    gc_grace_s: float = 24 * 3600.0,
) -> Iterator[ApiHarness]:
    """``ember api`` over ``nodes`` stub nodes; with ``storage``, the nodes write synthetic builds
    there, and ``storage_url`` (the same storage, as a URL) gives the API its ``-storage``."""
    cluster = StubCluster(nodes, storage)
    harness = ApiHarness(
        cluster, tmp_path / "api.sqlite3", limits=limits, storage_url=storage_url, gc_grace_s=gc_grace_s
    )
    try:
        yield harness.start()
    finally:
        harness.close()
        cluster.close()


def ws_roundtrip(url: str, headers: dict[str, str], text: str) -> str:
    """Open a WebSocket at ``url``, send ``text``, return the answer."""

    async def roundtrip() -> str:
        async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=headers) as ws:
            await ws.send_str(text)
            message = await ws.receive(timeout=10)
            return str(message.data)

    return asyncio.run(roundtrip())


# -- tests of the stub itself ------------------------------------------------------------------------


@pytest.fixture
def cluster() -> Iterator[StubCluster]:
    stub = StubCluster(1)
    yield stub
    stub.close()


def test_stub_node_creates_lists_and_deletes_over_grpc(cluster: StubCluster) -> None:
    with grpc.insecure_channel(cluster.addresses[0]) as channel:
        stub = orchestrator_pb2_grpc.SandboxServiceStub(channel)
        config = orchestrator_pb2.SandboxConfig(sandbox_id="iabc", build_id=BASE_BUILD, vcpu=2)
        stub.Create(orchestrator_pb2.SandboxCreateRequest(sandbox=config))
        assert [item.sandbox_id for item in stub.List(empty_pb2.Empty()).sandboxes] == ["iabc"]
        stub.Delete(orchestrator_pb2.SandboxDeleteRequest(sandbox_id="iabc"))
        with pytest.raises(grpc.RpcError) as caught:
            stub.Delete(orchestrator_pb2.SandboxDeleteRequest(sandbox_id="iabc"))
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_stub_node_proxy_reaches_the_stand_in_vm(cluster: StubCluster) -> None:
    import httpx

    node = cluster.nodes[0]
    node.adopt("iabc")
    answer = httpx.get(
        f"http://{node.host}:{cluster.proxy_port}/echo", headers={"Host": f"{APP_PORT}-iabc.{DOMAIN}"}
    )
    assert answer.status_code == 200
    assert json.loads(answer.text)["sandbox"] == "iabc"
    missing = httpx.get(
        f"http://{node.host}:{cluster.proxy_port}/", headers={"Host": f"{APP_PORT}-inone.{DOMAIN}"}
    )
    assert missing.status_code == 502

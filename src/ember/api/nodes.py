"""The orchestrator nodes the control plane places sandboxes on: a static list, polled.

Each node is one gRPC channel to ``host:port`` (the node daemon, :5008) and, beside it,
the node's sandbox proxy at ``http://host:<node-proxy-port>`` (:5007). A node is known by
its address as given (``-orchestrator``): that is what the ``sandboxes``, ``snapshots`` and
``template_builds`` rows record as their node. The channel carries the node's three
services: ``SandboxService``, ``InfoService`` and ``TemplateService`` (template builds; only
nodes whose ServiceInfo lists the TemplateBuilder role get them).

``NodePool.sync`` runs every ``SYNC_INTERVAL_S`` (20 s, the original's): ``ServiceInfo``
refreshes the node's status and load for placement, ``List`` gives the sandboxes it runs
(reconciled against the catalog by the caller). A node that does not answer is not
healthy until it answers again; only a Healthy node takes new sandboxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from ember.errors import UsageError
from ember.rpc import (
    info_pb2,
    info_pb2_grpc,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    template_manager_pb2,
    template_manager_pb2_grpc,
)

_log = logging.getLogger(__name__)

DEFAULT_ORCHESTRATOR = "127.0.0.1:5008"
DEFAULT_NODE_PROXY_PORT = 5007
SYNC_INTERVAL_S = 20.0
INFO_TIMEOUT_S = 5.0
CONTROL_TIMEOUT_S = 30.0
"""Delete, Update, List: quick calls on the node."""
CREATE_TIMEOUT_S = 120.0
"""Create and Pause may fetch and write whole builds."""
PAUSE_TIMEOUT_S = 300.0
TEMPLATE_TIMEOUT_S = 30.0
"""TemplateCreate (returns once the build started), TemplateBuildStatus, InitLayerFileUpload."""


class NodeError(Exception):
    """A node call failed; ``code`` is its gRPC status."""

    def __init__(self, node: str, method: str, code: grpc.StatusCode, details: str) -> None:
        self.node = node
        self.method = method
        self.code = code
        self.details = details
        super().__init__(f"node {node}: {method} failed with {code.name}: {details}")


@dataclass(frozen=True)
class NodeSandbox:
    """One sandbox a node reports running (``SandboxService/List``)."""

    sandbox_id: str
    client_id: str
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    vcpu: int
    ram_mb: int


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6); raises UsageError."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"orchestrator address {address!r} is not host:port, e.g. {DEFAULT_ORCHESTRATOR}")
    return host.strip("[]"), int(port)


def _stamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


class NodeClient:
    """One node: its channel, its last ``ServiceInfo``, and what placement added since."""

    def __init__(self, address: str, proxy_port: int) -> None:
        self.address = address
        self.host, self.grpc_port = parse_address(address)
        self.proxy_port = proxy_port
        self._channel = grpc.aio.insecure_channel(address)
        self._sandboxes = orchestrator_pb2_grpc.SandboxServiceStub(self._channel)
        self._info = info_pb2_grpc.InfoServiceStub(self._channel)
        self._templates = template_manager_pb2_grpc.TemplateServiceStub(self._channel)
        self.info: info_pb2.ServiceInfoResponse | None = None
        self.reachable = False
        self.pending_vcpus = 0
        """vCPUs of creates in flight on this node (placement's ``pendingCPUs``)."""
        self.placed_vcpus = 0
        """vCPUs placed here since the last ServiceInfo (the optimistic add)."""

    @property
    def proxy_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.proxy_port}"

    @property
    def healthy(self) -> bool:
        return self.reachable and self.info is not None and self.info.service_status == info_pb2.Healthy

    @property
    def builds_templates(self) -> bool:
        """Healthy and in the TemplateBuilder role (ServiceInfo ``service_roles``)."""
        return self.healthy and self.info is not None and info_pb2.TemplateBuilder in self.info.service_roles

    async def close(self) -> None:
        await self._channel.close()

    async def refresh(self) -> info_pb2.ServiceInfoResponse:
        try:
            info = await self._info.ServiceInfo(empty_pb2.Empty(), timeout=INFO_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if self.reachable:
                _log.warning("node %s stopped answering: %s", self.address, exc.details())
            self.reachable = False
            raise NodeError(self.address, "ServiceInfo", exc.code(), exc.details() or "") from exc
        if not self.reachable:
            _log.info(
                "node %s (%s) is reachable: %s",
                self.address,
                info.node_id,
                info_pb2.ServiceInfoStatus.Name(info.service_status),
            )
        self.info = info
        self.reachable = True
        self.placed_vcpus = 0
        return info

    async def create(
        self, request: orchestrator_pb2.SandboxCreateRequest
    ) -> orchestrator_pb2.SandboxCreateResponse:
        try:
            return await self._sandboxes.Create(request, timeout=CREATE_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise NodeError(self.address, "Create", exc.code(), exc.details() or "") from exc

    async def delete(self, sandbox_id: str, reason: str) -> bool:
        """Kill ``sandbox_id``; False when the node does not run it (already gone)."""
        try:
            await self._sandboxes.Delete(
                orchestrator_pb2.SandboxDeleteRequest(sandbox_id=sandbox_id, kill_reason=reason),
                timeout=CONTROL_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return False
            raise NodeError(self.address, "Delete", exc.code(), exc.details() or "") from exc
        return True

    async def update(
        self,
        sandbox_id: str,
        end_time: dt.datetime | None = None,
        egress: orchestrator_pb2.SandboxNetworkEgressConfig | None = None,
    ) -> None:
        request = orchestrator_pb2.SandboxUpdateRequest(sandbox_id=sandbox_id)
        if end_time is not None:
            request.end_time.CopyFrom(_stamp(end_time))
        if egress is not None:
            request.egress.CopyFrom(egress)
        try:
            await self._sandboxes.Update(request, timeout=CONTROL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise NodeError(self.address, "Update", exc.code(), exc.details() or "") from exc

    async def pause(
        self, sandbox_id: str, template_id: str, build_id: str, filesystem_only: bool
    ) -> orchestrator_pb2.SandboxPauseResponse:
        request = orchestrator_pb2.SandboxPauseRequest(
            sandbox_id=sandbox_id, template_id=template_id, build_id=build_id, filesystem_only=filesystem_only
        )
        try:
            return await self._sandboxes.Pause(request, timeout=PAUSE_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise NodeError(self.address, "Pause", exc.code(), exc.details() or "") from exc

    async def checkpoint(self, sandbox_id: str, build_id: str) -> orchestrator_pb2.SandboxCheckpointResponse:
        request = orchestrator_pb2.SandboxCheckpointRequest(sandbox_id=sandbox_id, build_id=build_id)
        try:
            return await self._sandboxes.Checkpoint(request, timeout=PAUSE_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise NodeError(self.address, "Checkpoint", exc.code(), exc.details() or "") from exc

    # -- TemplateService ------------------------------------------------------------------------

    async def template_create(self, request: template_manager_pb2.TemplateCreateRequest) -> None:
        try:
            await self._templates.TemplateCreate(request, timeout=TEMPLATE_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise NodeError(self.address, "TemplateCreate", exc.code(), exc.details() or "") from exc

    async def template_status(
        self, request: template_manager_pb2.TemplateStatusRequest
    ) -> template_manager_pb2.TemplateBuildStatusResponse:
        try:
            return await self._templates.TemplateBuildStatus(request, timeout=TEMPLATE_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise NodeError(self.address, "TemplateBuildStatus", exc.code(), exc.details() or "") from exc

    async def template_delete(self, template_id: str, build_id: str) -> bool:
        """Cancel and forget a build; False when the node does not know it."""
        try:
            await self._templates.TemplateBuildDelete(
                template_manager_pb2.TemplateBuildDeleteRequest(buildID=build_id, templateID=template_id),
                timeout=TEMPLATE_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return False
            raise NodeError(self.address, "TemplateBuildDelete", exc.code(), exc.details() or "") from exc
        return True

    async def init_layer_upload(
        self, template_id: str, files_hash: str, cache_scope: str
    ) -> template_manager_pb2.InitLayerFileUploadResponse:
        request = template_manager_pb2.InitLayerFileUploadRequest(
            templateID=template_id, hash=files_hash, cacheScope=cache_scope
        )
        try:
            return await self._templates.InitLayerFileUpload(request, timeout=TEMPLATE_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise NodeError(self.address, "InitLayerFileUpload", exc.code(), exc.details() or "") from exc

    async def list(self) -> list[NodeSandbox]:
        try:
            answer = await self._sandboxes.List(empty_pb2.Empty(), timeout=CONTROL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise NodeError(self.address, "List", exc.code(), exc.details() or "") from exc
        return [
            NodeSandbox(
                sandbox_id=item.sandbox_id or item.config.sandbox_id,
                client_id=item.client_id,
                start_time=item.start_time.ToDatetime(tzinfo=dt.UTC) if item.HasField("start_time") else None,
                end_time=item.end_time.ToDatetime(tzinfo=dt.UTC) if item.HasField("end_time") else None,
                vcpu=item.vcpu,
                ram_mb=item.ram_mb,
            )
            for item in answer.sandboxes
        ]


class NodePool:
    """The static node list (see the module docstring)."""

    def __init__(self, addresses: Sequence[str], proxy_port: int = DEFAULT_NODE_PROXY_PORT) -> None:
        if not addresses:
            raise UsageError("no orchestrator given: pass -orchestrator host:port at least once")
        self.nodes: dict[str, NodeClient] = {}
        for address in addresses:
            if address in self.nodes:
                raise UsageError(f"orchestrator {address} is given twice")
            self.nodes[address] = NodeClient(address, proxy_port)

    def get(self, address: str) -> NodeClient | None:
        return self.nodes.get(address)

    def healthy(self) -> list[NodeClient]:
        return [node for node in self.nodes.values() if node.healthy]

    async def refresh_all(self) -> None:
        """ServiceInfo from every node at once; failures only mark their node unreachable."""
        await asyncio.gather(*(self._refresh(node) for node in self.nodes.values()))

    async def _refresh(self, node: NodeClient) -> None:
        with contextlib.suppress(NodeError):
            await node.refresh()

    async def close(self) -> None:
        await asyncio.gather(*(node.close() for node in self.nodes.values()), return_exceptions=True)

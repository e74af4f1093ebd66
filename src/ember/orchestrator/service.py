"""E2B's node gRPC services over the manager: ``SandboxService`` and ``InfoService``.

This module only converts: protobuf messages to ``CreateRequest`` and back, library records
to ``SchedulingMetadata``, errors to gRPC statuses. A handler never lets an exception out:
an ``OrchestratorError`` is answered with its code and message, any other failure with
INTERNAL and a message (and its traceback in the log), so a bad request never harms the
daemon or another sandbox.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from collections.abc import Callable
from typing import NoReturn, TypeVar

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from ember.errors import EmberError, UsageError
from ember.network import EgressPolicy
from ember.orchestrator.host import CpuMeter, disk_usage, machine_info, memory_usage
from ember.orchestrator.manager import CreateRequest, Managed, OrchestratorError, SandboxManager
from ember.orchestrator.telemetry import Metrics
from ember.rpc import info_pb2, info_pb2_grpc, orchestrator_pb2, orchestrator_pb2_grpc
from ember.sandbox import ArtifactBuilds, PauseResult, SchedulingInfo

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

SERVICE_VERSION = "0.1.0"


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("grpc's abort returned")  # it raises; this line keeps the type checker honest


class _Answering:
    """The error boundary every handler runs in."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def answer(self, method: str, context: grpc.ServicerContext, handler: Callable[[], _T]) -> _T:
        try:
            return handler()
        except OrchestratorError as exc:
            self._metrics.grpc_errors.labels(method, exc.code.name).inc()
            _abort(context, exc.code, str(exc))
        except EmberError as exc:
            self._metrics.grpc_errors.labels(method, "INTERNAL").inc()
            _log.warning("%s failed: %s", method, exc)
            _abort(context, grpc.StatusCode.INTERNAL, str(exc))
        except Exception as exc:  # a bug: one line to the caller, the traceback to the log
            self._metrics.grpc_errors.labels(method, "INTERNAL").inc()
            _log.exception("%s failed unexpectedly", method)
            _abort(context, grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def _time(stamp: timestamp_pb2.Timestamp, present: bool) -> dt.datetime | None:
    return stamp.ToDatetime(tzinfo=dt.UTC) if present else None


def _stamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def egress_policy(
    egress: orchestrator_pb2.SandboxNetworkEgressConfig, allow_internet_access: bool | None, sandbox_id: str
) -> EgressPolicy:
    """The control plane's egress config as the slot firewall's policy (UsageError for a bad CIDR).

    The firewall filters by address only: domain names, per-domain rules and an egress proxy
    need the original's egress proxy, which this node does not run. They are accepted (the SDKs
    send them) and logged as not enforced; the sandbox is never more open for them, since its
    CIDR rules still apply (with 0.0.0.0/0 denied, the named domains are unreachable too).
    """
    unenforced = [
        name
        for name, given in (
            ("allowed_domains", list(egress.allowed_domains)),
            ("rules", list(egress.rules)),
            ("egress_proxy_address", egress.egress_proxy_address),
        )
        if given
    ]
    if unenforced:
        _log.warning(
            "sandbox %s: egress %s not enforced by this node (it filters by address only); "
            "its traffic follows its CIDR rules",
            sandbox_id,
            ", ".join(unenforced),
        )
    allow_internet = True if allow_internet_access is None else allow_internet_access
    denied = list(egress.denied_cidrs)
    if "0.0.0.0/0" in denied:  # the API's spelling of "no internet access"
        denied.remove("0.0.0.0/0")
        allow_internet = False
    return EgressPolicy.parse(
        allowed_cidrs=egress.allowed_cidrs, denied_cidrs=denied, allow_internet_access=allow_internet
    )


def create_request(message: orchestrator_pb2.SandboxCreateRequest) -> CreateRequest:
    config = message.sandbox
    network = config.network
    ingress = network.ingress
    try:
        egress = egress_policy(
            network.egress,
            config.allow_internet_access if config.HasField("allow_internet_access") else None,
            config.sandbox_id,
        )
    except UsageError as exc:
        raise OrchestratorError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
    return CreateRequest(
        sandbox_id=config.sandbox_id,
        build_id=config.build_id,
        template_id=config.template_id,
        snapshot=config.snapshot,
        filesystem_boot=message.filesystem_boot,
        env_vars=dict(config.env_vars),
        envd_access_token=config.envd_access_token if config.HasField("envd_access_token") else None,
        vcpu=config.vcpu,
        ram_mb=config.ram_mb,
        total_disk_size_mb=config.total_disk_size_mb,
        team_id=config.team_id,
        execution_id=config.execution_id,
        start_time=_time(message.start_time, message.HasField("start_time")),
        end_time=_time(message.end_time, message.HasField("end_time")),
        egress=egress,
        traffic_access_token=ingress.traffic_access_token
        if ingress.HasField("traffic_access_token")
        else None,
        mask_request_host=ingress.mask_request_host if ingress.HasField("mask_request_host") else None,
        config=config.SerializeToString(),
    )


def scheduling_metadata(info: SchedulingInfo) -> orchestrator_pb2.SchedulingMetadata:
    nil = ArtifactBuilds(uuid.UUID(int=0), (), ())
    memfile = info.memfile or nil
    return orchestrator_pb2.SchedulingMetadata(
        memfile_base_build_id=str(memfile.base_build_id) if info.memfile else "",
        build_id=str(info.build_id),
        memfile_build_ids=[str(build) for build in memfile.build_ids],
        rootfs_build_ids=[str(build) for build in info.rootfs.build_ids],
        memfile_dropped_builds=memfile.dropped_builds,
        rootfs_dropped_builds=info.rootfs.dropped_builds,
        memfile_build_bytes=list(memfile.build_bytes),
        rootfs_build_bytes=list(info.rootfs.build_bytes),
        rootfs_base_build_id=str(info.rootfs.base_build_id),
    )


def _running(managed: Managed, client_id: str) -> orchestrator_pb2.RunningSandbox:
    config = orchestrator_pb2.SandboxConfig()
    config.ParseFromString(managed.request.config)
    return orchestrator_pb2.RunningSandbox(
        config=config,
        client_id=client_id,
        start_time=_stamp(managed.start_time),
        end_time=_stamp(managed.end_time),
        sandbox_id=managed.sandbox.id,
        team_id=managed.request.team_id,
        execution_id=managed.request.execution_id,
        vcpu=managed.vcpu,
        ram_mb=managed.ram_mb,
    )


class SandboxService(orchestrator_pb2_grpc.SandboxServiceServicer):
    """``/SandboxService/*``."""

    def __init__(self, manager: SandboxManager, metrics: Metrics) -> None:
        self.manager = manager
        self.metrics = metrics
        self._answering = _Answering(metrics)

    def Create(
        self, request: orchestrator_pb2.SandboxCreateRequest, context: grpc.ServicerContext
    ) -> orchestrator_pb2.SandboxCreateResponse:
        def create() -> orchestrator_pb2.SandboxCreateResponse:
            try:
                created = self.manager.create(create_request(request))
            except OrchestratorError:
                self.metrics.start_failures.inc()
                raise
            self.metrics.starts.labels("boot" if created.filesystem_boot_applied else "resume").inc()
            self.metrics.start_seconds.observe(created.start_s)
            return orchestrator_pb2.SandboxCreateResponse(
                client_id=created.client_id,
                scheduling_metadata=scheduling_metadata(created.scheduling),
                filesystem_boot_applied=created.filesystem_boot_applied,
            )

        return self._answering.answer("Create", context, create)

    def Update(
        self, request: orchestrator_pb2.SandboxUpdateRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        def update() -> empty_pb2.Empty:
            end = _time(request.end_time, request.HasField("end_time"))
            egress = None
            if request.HasField("egress"):
                try:
                    egress = egress_policy(request.egress, None, request.sandbox_id)
                except UsageError as exc:
                    raise OrchestratorError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
            self.manager.update(request.sandbox_id, end, egress)
            return empty_pb2.Empty()

        return self._answering.answer("Update", context, update)

    def List(
        self, request: empty_pb2.Empty, context: grpc.ServicerContext
    ) -> orchestrator_pb2.SandboxListResponse:
        def listed() -> orchestrator_pb2.SandboxListResponse:
            client_id = self.manager.client_id
            return orchestrator_pb2.SandboxListResponse(
                sandboxes=[_running(managed, client_id) for managed in self.manager.running()]
            )

        return self._answering.answer("List", context, listed)

    def Delete(
        self, request: orchestrator_pb2.SandboxDeleteRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        def delete() -> empty_pb2.Empty:
            self.manager.delete(request.sandbox_id)
            return empty_pb2.Empty()

        return self._answering.answer("Delete", context, delete)

    def Pause(
        self, request: orchestrator_pb2.SandboxPauseRequest, context: grpc.ServicerContext
    ) -> orchestrator_pb2.SandboxPauseResponse:
        def pause() -> orchestrator_pb2.SandboxPauseResponse:
            result = self._timed(
                lambda: self.manager.pause(request.sandbox_id, request.build_id, request.filesystem_only)
            )
            return orchestrator_pb2.SandboxPauseResponse(
                scheduling_metadata=scheduling_metadata(result.scheduling)
            )

        return self._answering.answer("Pause", context, pause)

    def Checkpoint(
        self, request: orchestrator_pb2.SandboxCheckpointRequest, context: grpc.ServicerContext
    ) -> orchestrator_pb2.SandboxCheckpointResponse:
        def checkpoint() -> orchestrator_pb2.SandboxCheckpointResponse:
            result = self._timed(lambda: self.manager.checkpoint(request.sandbox_id, request.build_id))
            return orchestrator_pb2.SandboxCheckpointResponse(
                scheduling_metadata=scheduling_metadata(result.scheduling)
            )

        return self._answering.answer("Checkpoint", context, checkpoint)

    def _timed(self, pause: Callable[[], PauseResult]) -> PauseResult:
        result = pause()
        self.metrics.pauses.inc()
        self.metrics.pause_seconds.observe(result.duration_s)
        return result


class InfoService(info_pb2_grpc.InfoServiceServicer):
    """``/InfoService/*``: the node's identity, status and load, for the control plane's placement."""

    def __init__(self, manager: SandboxManager, metrics: Metrics, node_id: str, commit: str = "") -> None:
        self.manager = manager
        self.node_id = node_id
        self.service_id = str(uuid.uuid4())
        self.commit = commit
        self.started = dt.datetime.now(dt.UTC)
        self.status = info_pb2.Healthy
        self.status_changed = self.started
        self._cpu = CpuMeter()
        self._answering = _Answering(metrics)

    def ServiceInfo(
        self, request: empty_pb2.Empty, context: grpc.ServicerContext
    ) -> info_pb2.ServiceInfoResponse:
        return self._answering.answer("ServiceInfo", context, self._info)

    def _info(self) -> info_pb2.ServiceInfoResponse:
        running = self.manager.running()
        memory = memory_usage()
        machine = machine_info()
        env = self.manager.node.env
        disks = disk_usage([env.orchestrator_base_path, env.snapshot_cache_dir])
        allocated_ram = sum(managed.ram_mb for managed in running) << 20
        return info_pb2.ServiceInfoResponse(
            node_id=self.node_id,
            service_id=self.service_id,
            service_version=SERVICE_VERSION,
            service_commit=self.commit,
            service_status=self.status,
            service_roles=[info_pb2.Orchestrator, info_pb2.TemplateBuilder],
            service_startup=_stamp(self.started),
            machine_info=info_pb2.MachineInfo(
                cpu_architecture=machine.cpu_architecture,
                cpu_family=machine.cpu_family,
                cpu_model=machine.cpu_model,
                cpu_model_name=machine.cpu_model_name,
                cpu_flags=list(machine.cpu_flags),
            ),
            service_status_changed_at=_stamp(self.status_changed),
            metric_vcpu_used=sum(managed.vcpu for managed in running),
            metric_memory_used_mb=memory.used_bytes >> 20,
            metric_disk_mb=sum(disk.used_bytes for disk in disks) >> 20,
            metric_sandboxes_running=len(running),
            metric_cpu_percent=self._cpu.percent(),
            metric_memory_used_bytes=memory.used_bytes,
            metric_cpu_count=os.cpu_count() or 1,
            metric_memory_total_bytes=memory.total_bytes,
            metric_cpu_allocated=sum(managed.vcpu for managed in running),
            metric_memory_allocated_bytes=allocated_ram,
            metric_disk_allocated_bytes=sum(managed.request.total_disk_size_mb << 20 for managed in running),
            metric_disks=[
                info_pb2.DiskMetrics(
                    mount_point=disk.mount_point,
                    device=disk.device,
                    filesystem_type=disk.filesystem_type,
                    used_bytes=disk.used_bytes,
                    total_bytes=disk.total_bytes,
                )
                for disk in disks
            ],
            metric_hugepages_total=memory.hugepages_total,
            metric_hugepages_used=memory.hugepages_total - memory.hugepages_free,
            metric_hugepages_reserved=memory.hugepages_reserved,
            metric_hugepage_size_bytes=memory.hugepage_size_bytes,
        )

    def ServiceStatusOverride(
        self, request: info_pb2.ServiceStatusChangeRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        def override() -> empty_pb2.Empty:
            if request.service_status not in info_pb2.ServiceInfoStatus.values():
                raise OrchestratorError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"unknown service status {request.service_status}"
                )
            if request.service_status != self.status:
                self.status = request.service_status
                self.status_changed = dt.datetime.now(dt.UTC)
                _log.info("service status set to %s", info_pb2.ServiceInfoStatus.Name(self.status))
            return empty_pb2.Empty()

        return self._answering.answer("ServiceStatusOverride", context, override)

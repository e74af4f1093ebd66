"""The generated code speaks E2B's wire: method paths, field numbers and types, enum values.

Expected values are the facts table of E2B's protos, written out here by hand, so a typo in a
.proto (a renumbered field, a package that changes every method path) fails a test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from ember.rpc import (
    info_pb2,
    info_pb2_grpc,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    proxy_pb2,
    proxy_pb2_grpc,
    template_manager_pb2,
    template_manager_pb2_grpc,
)

STRING = FieldDescriptor.TYPE_STRING
BOOL = FieldDescriptor.TYPE_BOOL
INT32 = FieldDescriptor.TYPE_INT32
INT64 = FieldDescriptor.TYPE_INT64
UINT32 = FieldDescriptor.TYPE_UINT32
UINT64 = FieldDescriptor.TYPE_UINT64
MESSAGE = FieldDescriptor.TYPE_MESSAGE
ENUM = FieldDescriptor.TYPE_ENUM


class _RecordingChannel:
    """Stands in for a grpc.Channel: records the method path each stub callable is made for."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def _record(self, path: str, *args: Any, **kwargs: Any) -> Callable[..., None]:
        self.paths.append(path)
        return lambda *call_args, **call_kwargs: None

    unary_unary = unary_stream = stream_unary = stream_stream = _record


@pytest.mark.parametrize(
    ("stub", "paths"),
    [
        (
            orchestrator_pb2_grpc.SandboxServiceStub,
            [
                "/SandboxService/Create", "/SandboxService/Update", "/SandboxService/List",
                "/SandboxService/Delete", "/SandboxService/Pause", "/SandboxService/Checkpoint",
            ],
        ),
        (info_pb2_grpc.InfoServiceStub, ["/InfoService/ServiceInfo", "/InfoService/ServiceStatusOverride"]),
        (
            template_manager_pb2_grpc.TemplateServiceStub,
            [
                "/TemplateService/TemplateCreate", "/TemplateService/TemplateBuildStatus",
                "/TemplateService/TemplateBuildDelete", "/TemplateService/InitLayerFileUpload",
            ],
        ),
        (proxy_pb2_grpc.SandboxServiceStub, ["/proxy.SandboxService/ResumeSandbox"]),
    ],
)  # fmt: skip
def test_stubs_call_the_original_method_paths(stub: Callable[[Any], object], paths: list[str]) -> None:
    channel = _RecordingChannel()
    stub(channel)
    assert channel.paths == paths


class _RecordingServer:
    """Stands in for a grpc.Server: keeps the handlers a generated ``add_*_to_server`` registers."""

    def __init__(self) -> None:
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, object]) -> None:
        """Newer grpcio's fast path; the generic handlers above answer the same paths."""

    def serves(self, path: str) -> bool:
        details = _CallDetails(path)
        return any(handler.service(details) is not None for handler in self.handlers)


@dataclass(frozen=True)
class _CallDetails(grpc.HandlerCallDetails):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


@pytest.mark.parametrize(
    ("register", "servicer", "paths"),
    [
        (orchestrator_pb2_grpc.add_SandboxServiceServicer_to_server,
         orchestrator_pb2_grpc.SandboxServiceServicer,
         ["/SandboxService/Create", "/SandboxService/Checkpoint"]),
        (info_pb2_grpc.add_InfoServiceServicer_to_server, info_pb2_grpc.InfoServiceServicer,
         ["/InfoService/ServiceInfo", "/InfoService/ServiceStatusOverride"]),
        (template_manager_pb2_grpc.add_TemplateServiceServicer_to_server,
         template_manager_pb2_grpc.TemplateServiceServicer,
         ["/TemplateService/TemplateCreate", "/TemplateService/InitLayerFileUpload"]),
        (proxy_pb2_grpc.add_SandboxServiceServicer_to_server, proxy_pb2_grpc.SandboxServiceServicer,
         ["/proxy.SandboxService/ResumeSandbox"]),
    ],
)  # fmt: skip
def test_servicers_answer_on_the_original_method_paths(
    register: Callable[[Any, Any], None], servicer: type, paths: list[str]
) -> None:
    server = _RecordingServer()
    concrete = type("Concrete", (servicer,), {"__abstractmethods__": frozenset()})
    register(concrete(), server)
    assert [server.serves(path) for path in paths] == [True] * len(paths)
    assert not server.serves("/ember.SandboxService/Create")
    assert not server.serves("/SandboxService/create")


def test_node_protos_declare_no_package_and_the_proxy_proto_does() -> None:
    assert orchestrator_pb2.DESCRIPTOR.package == ""
    assert info_pb2.DESCRIPTOR.package == ""
    assert template_manager_pb2.DESCRIPTOR.package == ""
    assert proxy_pb2.DESCRIPTOR.package == "proxy"


def _signature(module: Any, service: str) -> list[tuple[str, str, str]]:
    methods = module.DESCRIPTOR.services_by_name[service].methods
    return [(m.name, m.input_type.full_name, m.output_type.full_name) for m in methods]


def test_request_and_response_types_of_every_method() -> None:
    empty = "google.protobuf.Empty"
    assert _signature(orchestrator_pb2, "SandboxService") == [
        ("Create", "SandboxCreateRequest", "SandboxCreateResponse"),
        ("Update", "SandboxUpdateRequest", empty),
        ("List", empty, "SandboxListResponse"),
        ("Delete", "SandboxDeleteRequest", empty),
        ("Pause", "SandboxPauseRequest", "SandboxPauseResponse"),
        ("Checkpoint", "SandboxCheckpointRequest", "SandboxCheckpointResponse"),
    ]
    assert _signature(info_pb2, "InfoService") == [
        ("ServiceInfo", empty, "ServiceInfoResponse"),
        ("ServiceStatusOverride", "ServiceStatusChangeRequest", empty),
    ]
    assert _signature(template_manager_pb2, "TemplateService") == [
        ("TemplateCreate", "TemplateCreateRequest", empty),
        ("TemplateBuildStatus", "TemplateStatusRequest", "TemplateBuildStatusResponse"),
        ("TemplateBuildDelete", "TemplateBuildDeleteRequest", empty),
        ("InitLayerFileUpload", "InitLayerFileUploadRequest", "InitLayerFileUploadResponse"),
    ]
    assert _signature(proxy_pb2, "SandboxService") == [
        ("ResumeSandbox", "proxy.SandboxResumeRequest", "proxy.SandboxResumeResponse")
    ]


def _fields(descriptor: Any) -> list[tuple[int, str, int, bool, bool]]:
    """(number, name, type, repeated, explicit presence) of every field, by number."""
    return sorted((f.number, f.name, f.type, f.is_repeated, f.has_presence) for f in descriptor.fields)


def test_sandbox_config_fields() -> None:
    assert _fields(orchestrator_pb2.SandboxConfig.DESCRIPTOR) == [
        (1, "template_id", STRING, False, False),
        (2, "build_id", STRING, False, False),
        (3, "kernel_version", STRING, False, False),
        (4, "firecracker_version", STRING, False, False),
        (5, "huge_pages", BOOL, False, False),
        (6, "sandbox_id", STRING, False, False),
        (7, "env_vars", MESSAGE, True, False),
        (8, "metadata", MESSAGE, True, False),
        (9, "alias", STRING, False, True),
        (10, "envd_version", STRING, False, False),
        (11, "vcpu", INT64, False, False),
        (12, "ram_mb", INT64, False, False),
        (13, "team_id", STRING, False, False),
        (14, "max_sandbox_length", INT64, False, False),
        (15, "total_disk_size_mb", INT64, False, False),
        (16, "snapshot", BOOL, False, False),
        (17, "base_template_id", STRING, False, False),
        (18, "auto_pause", BOOL, False, False),
        (19, "envd_access_token", STRING, False, True),
        (20, "execution_id", STRING, False, False),
        (21, "allow_internet_access", BOOL, False, True),
        (22, "network", MESSAGE, False, True),
        (23, "volumeMounts", MESSAGE, True, False),
        (24, "auto_resume", MESSAGE, False, True),
        (25, "auto_pause_filesystem_only", BOOL, False, False),
        (26, "events_ttl_days", INT64, False, False),
        (27, "iam", MESSAGE, False, True),
    ]
    env_vars = orchestrator_pb2.SandboxConfig.DESCRIPTOR.fields_by_name["env_vars"].message_type
    assert env_vars is not None
    assert env_vars.GetOptions().map_entry


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (orchestrator_pb2.SchedulingMetadata, [
            (1, "memfile_base_build_id", STRING, False, False), (2, "build_id", STRING, False, False),
            (3, "memfile_build_ids", STRING, True, False), (4, "rootfs_build_ids", STRING, True, False),
            (5, "memfile_dropped_builds", UINT32, False, False),
            (6, "rootfs_dropped_builds", UINT32, False, False),
            (7, "memfile_build_bytes", UINT64, True, False), (8, "rootfs_build_bytes", UINT64, True, False),
            (9, "rootfs_base_build_id", STRING, False, False),
        ]),
        (orchestrator_pb2.SandboxCheckpointRequest, [
            (1, "sandbox_id", STRING, False, False), (3, "build_id", STRING, False, False),
            (4, "metadata", MESSAGE, True, False),
        ]),
        (orchestrator_pb2.SandboxUpdateRequest, [
            (1, "sandbox_id", STRING, False, False), (2, "end_time", MESSAGE, False, True),
            (3, "egress", MESSAGE, False, True),
        ]),
        (orchestrator_pb2.SandboxAutoResumeConfig, [
            (1, "policy", STRING, False, False), (2, "timeout_seconds", UINT64, False, False),
        ]),
        (orchestrator_pb2.SandboxNetworkIngressConfig, [
            (1, "traffic_access_token", STRING, False, True), (2, "mask_request_host", STRING, False, True),
        ]),
        (orchestrator_pb2.RunningSandbox, [
            (1, "config", MESSAGE, False, True), (2, "client_id", STRING, False, False),
            (3, "start_time", MESSAGE, False, True), (4, "end_time", MESSAGE, False, True),
            (5, "sandbox_id", STRING, False, False), (6, "team_id", STRING, False, False),
            (7, "execution_id", STRING, False, False), (8, "vcpu", INT64, False, False),
            (9, "ram_mb", INT64, False, False),
        ]),
        (info_pb2.ServiceStatusChangeRequest, [(2, "service_status", ENUM, False, False)]),
        (info_pb2.DiskMetrics, [
            (1, "mount_point", STRING, False, False), (2, "device", STRING, False, False),
            (3, "filesystem_type", STRING, False, False), (4, "used_bytes", UINT64, False, False),
            (5, "total_bytes", UINT64, False, False),
        ]),
        (template_manager_pb2.TemplateStatusRequest, [
            (1, "templateID", STRING, False, False), (2, "buildID", STRING, False, False),
            (3, "offset", INT32, False, True), (4, "level", ENUM, False, True),
            (5, "limit", UINT32, False, True), (6, "start", MESSAGE, False, True),
            (7, "end", MESSAGE, False, True), (8, "direction", ENUM, False, True),
        ]),
        (template_manager_pb2.TemplateBuildStatusResponse, [
            (1, "status", ENUM, False, False), (2, "metadata", MESSAGE, False, True),
            (5, "logEntries", MESSAGE, True, False), (6, "reason", MESSAGE, False, True),
        ]),
        (template_manager_pb2.InitLayerFileUploadResponse, [
            (1, "present", BOOL, False, False), (2, "url", STRING, False, True),
        ]),
        (proxy_pb2.SandboxResumeRequest, [(1, "sandbox_id", STRING, False, False)]),
        (proxy_pb2.SandboxResumeResponse, [(1, "orchestrator_ip", STRING, False, False)]),
    ],
    ids=lambda value: value.DESCRIPTOR.full_name if hasattr(value, "DESCRIPTOR") else "",
)  # fmt: skip
def test_message_fields(message: Any, expected: list[tuple[int, str, int, bool, bool]]) -> None:
    assert _fields(message.DESCRIPTOR) == expected


def test_service_info_numbers_keep_the_original_gaps() -> None:
    numbers = {f.name: f.number for f in info_pb2.ServiceInfoResponse.DESCRIPTOR.fields}
    assert numbers == {
        "node_id": 1, "service_id": 2, "service_version": 3, "service_commit": 4,
        "service_status": 51, "service_roles": 52, "service_startup": 53, "machine_info": 54,
        "labels": 55, "service_status_changed_at": 56,
        "metric_vcpu_used": 101, "metric_memory_used_mb": 102, "metric_disk_mb": 103,
        "metric_sandboxes_running": 104, "metric_cpu_percent": 105, "metric_memory_used_bytes": 106,
        "metric_cpu_count": 108, "metric_memory_total_bytes": 109, "metric_cpu_allocated": 110,
        "metric_memory_allocated_bytes": 111, "metric_disk_allocated_bytes": 112, "metric_disks": 113,
        "metric_hugepages_total": 114, "metric_hugepages_used": 115, "metric_hugepages_reserved": 116,
        "metric_hugepage_size_bytes": 117,
    }  # fmt: skip
    fields = info_pb2.ServiceInfoResponse.DESCRIPTOR.fields_by_name
    assert [fields[name].GetOptions().deprecated for name in ("metric_vcpu_used", "metric_cpu_count")] == [
        True,
        False,
    ]


def test_template_config_source_is_a_oneof_of_image_and_template() -> None:
    descriptor = template_manager_pb2.TemplateConfig.DESCRIPTOR
    source = descriptor.oneofs_by_name["source"]
    assert [(f.name, f.number) for f in source.fields] == [("fromImage", 11), ("fromTemplate", 14)]
    numbers = {f.name: f.number for f in descriptor.fields}
    assert numbers["force"] == 12
    assert numbers["steps"] == 13
    assert numbers["fromImageRegistry"] == 15
    assert numbers["teamID"] == 16
    registry = template_manager_pb2.FromImageRegistry.DESCRIPTOR.oneofs_by_name["type"]
    assert [(f.name, f.number) for f in registry.fields] == [("aws", 1), ("gcp", 2), ("general", 3)]


def test_enum_values() -> None:
    def values(enum: Any) -> dict[str, int]:
        return {value.name: value.number for value in enum.DESCRIPTOR.values}

    assert values(info_pb2.ServiceInfoStatus) == {"Healthy": 0, "Draining": 1, "Unhealthy": 2, "Standby": 3}
    assert values(info_pb2.ServiceInfoRole) == {"TemplateBuilder": 0, "Orchestrator": 1}
    assert values(template_manager_pb2.LogLevel) == {"Debug": 0, "Info": 1, "Warn": 2, "Error": 3}
    assert values(template_manager_pb2.LogsDirection) == {"Forward": 0, "Backward": 1}
    assert values(template_manager_pb2.TemplateBuildState) == {"Building": 0, "Failed": 1, "Completed": 2}


def test_reserved_numbers_and_names() -> None:
    """The Python descriptors do not expose reserved ranges; their DescriptorProto does."""
    resume = proxy_pb2.SandboxResumeRequest.DESCRIPTOR
    status = template_manager_pb2.TemplateBuildStatusResponse.DESCRIPTOR

    def reserved(descriptor: Any) -> tuple[list[tuple[int, int]], list[str]]:
        proto = descriptor_pb2.DescriptorProto()
        descriptor.CopyToProto(proto)
        return [(r.start, r.end) for r in proto.reserved_range], list(proto.reserved_name)

    assert reserved(resume) == ([(2, 3)], ["timeout_seconds"])
    assert reserved(status) == ([(3, 4), (4, 5)], [])


def test_field_19_is_on_the_wire_as_tag_154() -> None:
    config = orchestrator_pb2.SandboxConfig(envd_access_token="t")
    assert config.SerializeToString() == b"\x9a\x01\x01t"  # (19 << 3) | 2 = 154, varint 9a 01


def test_a_create_request_round_trips() -> None:
    start = Timestamp(seconds=1_700_000_000, nanos=5)
    request = orchestrator_pb2.SandboxCreateRequest(
        sandbox=orchestrator_pb2.SandboxConfig(
            template_id="tpl",
            build_id="b1",
            sandbox_id="isb1",
            env_vars={"A": "1"},
            vcpu=2,
            ram_mb=512,
            envd_access_token="",
            network=orchestrator_pb2.SandboxNetworkConfig(
                ingress=orchestrator_pb2.SandboxNetworkIngressConfig(traffic_access_token="tok"),
                egress=orchestrator_pb2.SandboxNetworkEgressConfig(
                    denied_cidrs=["0.0.0.0/0"],
                    rules={"example.com": orchestrator_pb2.SandboxNetworkDomainRules()},
                ),
            ),
            volumeMounts=[orchestrator_pb2.SandboxVolumeMount(id="v", path="/data", type="nfs", name="n")],
            auto_resume=orchestrator_pb2.SandboxAutoResumeConfig(policy="any", timeout_seconds=300),
        ),
        start_time=start,
        filesystem_boot=False,
    )
    decoded = orchestrator_pb2.SandboxCreateRequest.FromString(request.SerializeToString())
    assert decoded == request
    assert decoded.sandbox.HasField("envd_access_token")  # explicit presence survives an empty value
    assert not decoded.sandbox.HasField("alias")
    assert decoded.HasField("filesystem_boot")
    assert decoded.start_time.ToNanoseconds() == 1_700_000_000_000_000_005


def test_a_template_build_status_round_trips() -> None:
    response = template_manager_pb2.TemplateBuildStatusResponse(
        status=template_manager_pb2.Completed,
        metadata=template_manager_pb2.TemplateBuildMetadata(
            rootfsSizeKey=1024,
            envdVersionKey="0.4.0",
            schedulingMetadata=orchestrator_pb2.SchedulingMetadata(build_id="b1", memfile_build_bytes=[4096]),
        ),
        logEntries=[
            template_manager_pb2.TemplateBuildLogEntry(message="done", level=template_manager_pb2.Info)
        ],
    )
    decoded = template_manager_pb2.TemplateBuildStatusResponse.FromString(response.SerializeToString())
    assert decoded == response
    assert not decoded.HasField("reason")

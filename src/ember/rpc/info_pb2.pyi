import datetime

from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServiceInfoStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    Healthy: _ClassVar[ServiceInfoStatus]
    Draining: _ClassVar[ServiceInfoStatus]
    Unhealthy: _ClassVar[ServiceInfoStatus]
    Standby: _ClassVar[ServiceInfoStatus]

class ServiceInfoRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TemplateBuilder: _ClassVar[ServiceInfoRole]
    Orchestrator: _ClassVar[ServiceInfoRole]
Healthy: ServiceInfoStatus
Draining: ServiceInfoStatus
Unhealthy: ServiceInfoStatus
Standby: ServiceInfoStatus
TemplateBuilder: ServiceInfoRole
Orchestrator: ServiceInfoRole

class MachineInfo(_message.Message):
    __slots__ = ("cpu_architecture", "cpu_family", "cpu_model", "cpu_model_name", "cpu_flags")
    CPU_ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    CPU_FAMILY_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CPU_FLAGS_FIELD_NUMBER: _ClassVar[int]
    cpu_architecture: str
    cpu_family: str
    cpu_model: str
    cpu_model_name: str
    cpu_flags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cpu_architecture: _Optional[str] = ..., cpu_family: _Optional[str] = ..., cpu_model: _Optional[str] = ..., cpu_model_name: _Optional[str] = ..., cpu_flags: _Optional[_Iterable[str]] = ...) -> None: ...

class DiskMetrics(_message.Message):
    __slots__ = ("mount_point", "device", "filesystem_type", "used_bytes", "total_bytes")
    MOUNT_POINT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEM_TYPE_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    mount_point: str
    device: str
    filesystem_type: str
    used_bytes: int
    total_bytes: int
    def __init__(self, mount_point: _Optional[str] = ..., device: _Optional[str] = ..., filesystem_type: _Optional[str] = ..., used_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class ServiceInfoResponse(_message.Message):
    __slots__ = ("node_id", "service_id", "service_version", "service_commit", "service_status", "service_roles", "service_startup", "machine_info", "labels", "service_status_changed_at", "metric_vcpu_used", "metric_memory_used_mb", "metric_disk_mb", "metric_sandboxes_running", "metric_cpu_percent", "metric_memory_used_bytes", "metric_cpu_count", "metric_memory_total_bytes", "metric_cpu_allocated", "metric_memory_allocated_bytes", "metric_disk_allocated_bytes", "metric_disks", "metric_hugepages_total", "metric_hugepages_used", "metric_hugepages_reserved", "metric_hugepage_size_bytes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVICE_COMMIT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_STATUS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ROLES_FIELD_NUMBER: _ClassVar[int]
    SERVICE_STARTUP_FIELD_NUMBER: _ClassVar[int]
    MACHINE_INFO_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_STATUS_CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    METRIC_VCPU_USED_FIELD_NUMBER: _ClassVar[int]
    METRIC_MEMORY_USED_MB_FIELD_NUMBER: _ClassVar[int]
    METRIC_DISK_MB_FIELD_NUMBER: _ClassVar[int]
    METRIC_SANDBOXES_RUNNING_FIELD_NUMBER: _ClassVar[int]
    METRIC_CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    METRIC_MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    METRIC_CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    METRIC_MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    METRIC_CPU_ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    METRIC_MEMORY_ALLOCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    METRIC_DISK_ALLOCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    METRIC_DISKS_FIELD_NUMBER: _ClassVar[int]
    METRIC_HUGEPAGES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    METRIC_HUGEPAGES_USED_FIELD_NUMBER: _ClassVar[int]
    METRIC_HUGEPAGES_RESERVED_FIELD_NUMBER: _ClassVar[int]
    METRIC_HUGEPAGE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    service_id: str
    service_version: str
    service_commit: str
    service_status: ServiceInfoStatus
    service_roles: _containers.RepeatedScalarFieldContainer[ServiceInfoRole]
    service_startup: _timestamp_pb2.Timestamp
    machine_info: MachineInfo
    labels: _containers.RepeatedScalarFieldContainer[str]
    service_status_changed_at: _timestamp_pb2.Timestamp
    metric_vcpu_used: int
    metric_memory_used_mb: int
    metric_disk_mb: int
    metric_sandboxes_running: int
    metric_cpu_percent: int
    metric_memory_used_bytes: int
    metric_cpu_count: int
    metric_memory_total_bytes: int
    metric_cpu_allocated: int
    metric_memory_allocated_bytes: int
    metric_disk_allocated_bytes: int
    metric_disks: _containers.RepeatedCompositeFieldContainer[DiskMetrics]
    metric_hugepages_total: int
    metric_hugepages_used: int
    metric_hugepages_reserved: int
    metric_hugepage_size_bytes: int
    def __init__(self, node_id: _Optional[str] = ..., service_id: _Optional[str] = ..., service_version: _Optional[str] = ..., service_commit: _Optional[str] = ..., service_status: _Optional[_Union[ServiceInfoStatus, str]] = ..., service_roles: _Optional[_Iterable[_Union[ServiceInfoRole, str]]] = ..., service_startup: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., machine_info: _Optional[_Union[MachineInfo, _Mapping]] = ..., labels: _Optional[_Iterable[str]] = ..., service_status_changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metric_vcpu_used: _Optional[int] = ..., metric_memory_used_mb: _Optional[int] = ..., metric_disk_mb: _Optional[int] = ..., metric_sandboxes_running: _Optional[int] = ..., metric_cpu_percent: _Optional[int] = ..., metric_memory_used_bytes: _Optional[int] = ..., metric_cpu_count: _Optional[int] = ..., metric_memory_total_bytes: _Optional[int] = ..., metric_cpu_allocated: _Optional[int] = ..., metric_memory_allocated_bytes: _Optional[int] = ..., metric_disk_allocated_bytes: _Optional[int] = ..., metric_disks: _Optional[_Iterable[_Union[DiskMetrics, _Mapping]]] = ..., metric_hugepages_total: _Optional[int] = ..., metric_hugepages_used: _Optional[int] = ..., metric_hugepages_reserved: _Optional[int] = ..., metric_hugepage_size_bytes: _Optional[int] = ...) -> None: ...

class ServiceStatusChangeRequest(_message.Message):
    __slots__ = ("service_status",)
    SERVICE_STATUS_FIELD_NUMBER: _ClassVar[int]
    service_status: ServiceInfoStatus
    def __init__(self, service_status: _Optional[_Union[ServiceInfoStatus, str]] = ...) -> None: ...

import datetime

from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SandboxConfig(_message.Message):
    __slots__ = ("template_id", "build_id", "kernel_version", "firecracker_version", "huge_pages", "sandbox_id", "env_vars", "metadata", "alias", "envd_version", "vcpu", "ram_mb", "team_id", "max_sandbox_length", "total_disk_size_mb", "snapshot", "base_template_id", "auto_pause", "envd_access_token", "execution_id", "allow_internet_access", "network", "volumeMounts", "auto_resume", "auto_pause_filesystem_only", "events_ttl_days", "iam")
    class EnvVarsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    KERNEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FIRECRACKER_VERSION_FIELD_NUMBER: _ClassVar[int]
    HUGE_PAGES_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_VARS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    ENVD_VERSION_FIELD_NUMBER: _ClassVar[int]
    VCPU_FIELD_NUMBER: _ClassVar[int]
    RAM_MB_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_SANDBOX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DISK_SIZE_MB_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    BASE_TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    AUTO_PAUSE_FIELD_NUMBER: _ClassVar[int]
    ENVD_ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOW_INTERNET_ACCESS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    VOLUMEMOUNTS_FIELD_NUMBER: _ClassVar[int]
    AUTO_RESUME_FIELD_NUMBER: _ClassVar[int]
    AUTO_PAUSE_FILESYSTEM_ONLY_FIELD_NUMBER: _ClassVar[int]
    EVENTS_TTL_DAYS_FIELD_NUMBER: _ClassVar[int]
    IAM_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    build_id: str
    kernel_version: str
    firecracker_version: str
    huge_pages: bool
    sandbox_id: str
    env_vars: _containers.ScalarMap[str, str]
    metadata: _containers.ScalarMap[str, str]
    alias: str
    envd_version: str
    vcpu: int
    ram_mb: int
    team_id: str
    max_sandbox_length: int
    total_disk_size_mb: int
    snapshot: bool
    base_template_id: str
    auto_pause: bool
    envd_access_token: str
    execution_id: str
    allow_internet_access: bool
    network: SandboxNetworkConfig
    volumeMounts: _containers.RepeatedCompositeFieldContainer[SandboxVolumeMount]
    auto_resume: SandboxAutoResumeConfig
    auto_pause_filesystem_only: bool
    events_ttl_days: int
    iam: SandboxIam
    def __init__(self, template_id: _Optional[str] = ..., build_id: _Optional[str] = ..., kernel_version: _Optional[str] = ..., firecracker_version: _Optional[str] = ..., huge_pages: _Optional[bool] = ..., sandbox_id: _Optional[str] = ..., env_vars: _Optional[_Mapping[str, str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., alias: _Optional[str] = ..., envd_version: _Optional[str] = ..., vcpu: _Optional[int] = ..., ram_mb: _Optional[int] = ..., team_id: _Optional[str] = ..., max_sandbox_length: _Optional[int] = ..., total_disk_size_mb: _Optional[int] = ..., snapshot: _Optional[bool] = ..., base_template_id: _Optional[str] = ..., auto_pause: _Optional[bool] = ..., envd_access_token: _Optional[str] = ..., execution_id: _Optional[str] = ..., allow_internet_access: _Optional[bool] = ..., network: _Optional[_Union[SandboxNetworkConfig, _Mapping]] = ..., volumeMounts: _Optional[_Iterable[_Union[SandboxVolumeMount, _Mapping]]] = ..., auto_resume: _Optional[_Union[SandboxAutoResumeConfig, _Mapping]] = ..., auto_pause_filesystem_only: _Optional[bool] = ..., events_ttl_days: _Optional[int] = ..., iam: _Optional[_Union[SandboxIam, _Mapping]] = ...) -> None: ...

class SandboxIam(_message.Message):
    __slots__ = ("tokens",)
    class TokensEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SandboxIamToken
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SandboxIamToken, _Mapping]] = ...) -> None: ...
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.MessageMap[str, SandboxIamToken]
    def __init__(self, tokens: _Optional[_Mapping[str, SandboxIamToken]] = ...) -> None: ...

class SandboxIamToken(_message.Message):
    __slots__ = ("audience", "token_type")
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    audience: str
    token_type: str
    def __init__(self, audience: _Optional[str] = ..., token_type: _Optional[str] = ...) -> None: ...

class SandboxAutoResumeConfig(_message.Message):
    __slots__ = ("policy", "timeout_seconds")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    policy: str
    timeout_seconds: int
    def __init__(self, policy: _Optional[str] = ..., timeout_seconds: _Optional[int] = ...) -> None: ...

class SandboxVolumeMount(_message.Message):
    __slots__ = ("id", "path", "type", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    path: str
    type: str
    name: str
    def __init__(self, id: _Optional[str] = ..., path: _Optional[str] = ..., type: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class SandboxNetworkConfig(_message.Message):
    __slots__ = ("egress", "ingress")
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    INGRESS_FIELD_NUMBER: _ClassVar[int]
    egress: SandboxNetworkEgressConfig
    ingress: SandboxNetworkIngressConfig
    def __init__(self, egress: _Optional[_Union[SandboxNetworkEgressConfig, _Mapping]] = ..., ingress: _Optional[_Union[SandboxNetworkIngressConfig, _Mapping]] = ...) -> None: ...

class SandboxNetworkEgressConfig(_message.Message):
    __slots__ = ("allowed_cidrs", "denied_cidrs", "allowed_domains", "rules", "egress_proxy_address", "egress_proxy_username", "egress_proxy_password")
    class RulesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SandboxNetworkDomainRules
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SandboxNetworkDomainRules, _Mapping]] = ...) -> None: ...
    ALLOWED_CIDRS_FIELD_NUMBER: _ClassVar[int]
    DENIED_CIDRS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_DOMAINS_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    EGRESS_PROXY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    EGRESS_PROXY_USERNAME_FIELD_NUMBER: _ClassVar[int]
    EGRESS_PROXY_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    allowed_cidrs: _containers.RepeatedScalarFieldContainer[str]
    denied_cidrs: _containers.RepeatedScalarFieldContainer[str]
    allowed_domains: _containers.RepeatedScalarFieldContainer[str]
    rules: _containers.MessageMap[str, SandboxNetworkDomainRules]
    egress_proxy_address: str
    egress_proxy_username: str
    egress_proxy_password: str
    def __init__(self, allowed_cidrs: _Optional[_Iterable[str]] = ..., denied_cidrs: _Optional[_Iterable[str]] = ..., allowed_domains: _Optional[_Iterable[str]] = ..., rules: _Optional[_Mapping[str, SandboxNetworkDomainRules]] = ..., egress_proxy_address: _Optional[str] = ..., egress_proxy_username: _Optional[str] = ..., egress_proxy_password: _Optional[str] = ...) -> None: ...

class SandboxNetworkIngressConfig(_message.Message):
    __slots__ = ("traffic_access_token", "mask_request_host")
    TRAFFIC_ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MASK_REQUEST_HOST_FIELD_NUMBER: _ClassVar[int]
    traffic_access_token: str
    mask_request_host: str
    def __init__(self, traffic_access_token: _Optional[str] = ..., mask_request_host: _Optional[str] = ...) -> None: ...

class SandboxNetworkDomainRules(_message.Message):
    __slots__ = ("rules",)
    RULES_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[SandboxNetworkRule]
    def __init__(self, rules: _Optional[_Iterable[_Union[SandboxNetworkRule, _Mapping]]] = ...) -> None: ...

class SandboxNetworkRule(_message.Message):
    __slots__ = ("transform",)
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    transform: SandboxNetworkTransform
    def __init__(self, transform: _Optional[_Union[SandboxNetworkTransform, _Mapping]] = ...) -> None: ...

class SandboxNetworkTransform(_message.Message):
    __slots__ = ("headers",)
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    headers: _containers.ScalarMap[str, str]
    def __init__(self, headers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SandboxCreateRequest(_message.Message):
    __slots__ = ("sandbox", "start_time", "end_time", "filesystem_boot")
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEM_BOOT_FIELD_NUMBER: _ClassVar[int]
    sandbox: SandboxConfig
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    filesystem_boot: bool
    def __init__(self, sandbox: _Optional[_Union[SandboxConfig, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., filesystem_boot: _Optional[bool] = ...) -> None: ...

class SandboxCreateResponse(_message.Message):
    __slots__ = ("client_id", "scheduling_metadata", "filesystem_boot_applied")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULING_METADATA_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEM_BOOT_APPLIED_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    scheduling_metadata: SchedulingMetadata
    filesystem_boot_applied: bool
    def __init__(self, client_id: _Optional[str] = ..., scheduling_metadata: _Optional[_Union[SchedulingMetadata, _Mapping]] = ..., filesystem_boot_applied: _Optional[bool] = ...) -> None: ...

class SandboxUpdateRequest(_message.Message):
    __slots__ = ("sandbox_id", "end_time", "egress")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    end_time: _timestamp_pb2.Timestamp
    egress: SandboxNetworkEgressConfig
    def __init__(self, sandbox_id: _Optional[str] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., egress: _Optional[_Union[SandboxNetworkEgressConfig, _Mapping]] = ...) -> None: ...

class SandboxDeleteRequest(_message.Message):
    __slots__ = ("sandbox_id", "kill_reason")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    KILL_REASON_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    kill_reason: str
    def __init__(self, sandbox_id: _Optional[str] = ..., kill_reason: _Optional[str] = ...) -> None: ...

class SandboxPauseRequest(_message.Message):
    __slots__ = ("sandbox_id", "template_id", "build_id", "filesystem_only")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEM_ONLY_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    template_id: str
    build_id: str
    filesystem_only: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., template_id: _Optional[str] = ..., build_id: _Optional[str] = ..., filesystem_only: _Optional[bool] = ...) -> None: ...

class SchedulingMetadata(_message.Message):
    __slots__ = ("memfile_base_build_id", "build_id", "memfile_build_ids", "rootfs_build_ids", "memfile_dropped_builds", "rootfs_dropped_builds", "memfile_build_bytes", "rootfs_build_bytes", "rootfs_base_build_id")
    MEMFILE_BASE_BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    MEMFILE_BUILD_IDS_FIELD_NUMBER: _ClassVar[int]
    ROOTFS_BUILD_IDS_FIELD_NUMBER: _ClassVar[int]
    MEMFILE_DROPPED_BUILDS_FIELD_NUMBER: _ClassVar[int]
    ROOTFS_DROPPED_BUILDS_FIELD_NUMBER: _ClassVar[int]
    MEMFILE_BUILD_BYTES_FIELD_NUMBER: _ClassVar[int]
    ROOTFS_BUILD_BYTES_FIELD_NUMBER: _ClassVar[int]
    ROOTFS_BASE_BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    memfile_base_build_id: str
    build_id: str
    memfile_build_ids: _containers.RepeatedScalarFieldContainer[str]
    rootfs_build_ids: _containers.RepeatedScalarFieldContainer[str]
    memfile_dropped_builds: int
    rootfs_dropped_builds: int
    memfile_build_bytes: _containers.RepeatedScalarFieldContainer[int]
    rootfs_build_bytes: _containers.RepeatedScalarFieldContainer[int]
    rootfs_base_build_id: str
    def __init__(self, memfile_base_build_id: _Optional[str] = ..., build_id: _Optional[str] = ..., memfile_build_ids: _Optional[_Iterable[str]] = ..., rootfs_build_ids: _Optional[_Iterable[str]] = ..., memfile_dropped_builds: _Optional[int] = ..., rootfs_dropped_builds: _Optional[int] = ..., memfile_build_bytes: _Optional[_Iterable[int]] = ..., rootfs_build_bytes: _Optional[_Iterable[int]] = ..., rootfs_base_build_id: _Optional[str] = ...) -> None: ...

class SandboxPauseResponse(_message.Message):
    __slots__ = ("scheduling_metadata",)
    SCHEDULING_METADATA_FIELD_NUMBER: _ClassVar[int]
    scheduling_metadata: SchedulingMetadata
    def __init__(self, scheduling_metadata: _Optional[_Union[SchedulingMetadata, _Mapping]] = ...) -> None: ...

class SandboxCheckpointRequest(_message.Message):
    __slots__ = ("sandbox_id", "build_id", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    build_id: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, sandbox_id: _Optional[str] = ..., build_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SandboxCheckpointResponse(_message.Message):
    __slots__ = ("scheduling_metadata",)
    SCHEDULING_METADATA_FIELD_NUMBER: _ClassVar[int]
    scheduling_metadata: SchedulingMetadata
    def __init__(self, scheduling_metadata: _Optional[_Union[SchedulingMetadata, _Mapping]] = ...) -> None: ...

class RunningSandbox(_message.Message):
    __slots__ = ("config", "client_id", "start_time", "end_time", "sandbox_id", "team_id", "execution_id", "vcpu", "ram_mb")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    VCPU_FIELD_NUMBER: _ClassVar[int]
    RAM_MB_FIELD_NUMBER: _ClassVar[int]
    config: SandboxConfig
    client_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    sandbox_id: str
    team_id: str
    execution_id: str
    vcpu: int
    ram_mb: int
    def __init__(self, config: _Optional[_Union[SandboxConfig, _Mapping]] = ..., client_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sandbox_id: _Optional[str] = ..., team_id: _Optional[str] = ..., execution_id: _Optional[str] = ..., vcpu: _Optional[int] = ..., ram_mb: _Optional[int] = ...) -> None: ...

class SandboxListResponse(_message.Message):
    __slots__ = ("sandboxes",)
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    sandboxes: _containers.RepeatedCompositeFieldContainer[RunningSandbox]
    def __init__(self, sandboxes: _Optional[_Iterable[_Union[RunningSandbox, _Mapping]]] = ...) -> None: ...

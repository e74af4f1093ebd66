import datetime

from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from ember.rpc import orchestrator_pb2 as _orchestrator_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LogLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    Debug: _ClassVar[LogLevel]
    Info: _ClassVar[LogLevel]
    Warn: _ClassVar[LogLevel]
    Error: _ClassVar[LogLevel]

class LogsDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    Forward: _ClassVar[LogsDirection]
    Backward: _ClassVar[LogsDirection]

class TemplateBuildState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    Building: _ClassVar[TemplateBuildState]
    Failed: _ClassVar[TemplateBuildState]
    Completed: _ClassVar[TemplateBuildState]
Debug: LogLevel
Info: LogLevel
Warn: LogLevel
Error: LogLevel
Forward: LogsDirection
Backward: LogsDirection
Building: TemplateBuildState
Failed: TemplateBuildState
Completed: TemplateBuildState

class TemplateStep(_message.Message):
    __slots__ = ("type", "args", "force", "filesHash")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    FILESHASH_FIELD_NUMBER: _ClassVar[int]
    type: str
    args: _containers.RepeatedScalarFieldContainer[str]
    force: bool
    filesHash: str
    def __init__(self, type: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., force: _Optional[bool] = ..., filesHash: _Optional[str] = ...) -> None: ...

class FromTemplateConfig(_message.Message):
    __slots__ = ("alias", "buildID")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    BUILDID_FIELD_NUMBER: _ClassVar[int]
    alias: str
    buildID: str
    def __init__(self, alias: _Optional[str] = ..., buildID: _Optional[str] = ...) -> None: ...

class AWSRegistry(_message.Message):
    __slots__ = ("awsAccessKeyId", "awsSecretAccessKey", "awsRegion")
    AWSACCESSKEYID_FIELD_NUMBER: _ClassVar[int]
    AWSSECRETACCESSKEY_FIELD_NUMBER: _ClassVar[int]
    AWSREGION_FIELD_NUMBER: _ClassVar[int]
    awsAccessKeyId: str
    awsSecretAccessKey: str
    awsRegion: str
    def __init__(self, awsAccessKeyId: _Optional[str] = ..., awsSecretAccessKey: _Optional[str] = ..., awsRegion: _Optional[str] = ...) -> None: ...

class GCPRegistry(_message.Message):
    __slots__ = ("serviceAccountJson",)
    SERVICEACCOUNTJSON_FIELD_NUMBER: _ClassVar[int]
    serviceAccountJson: str
    def __init__(self, serviceAccountJson: _Optional[str] = ...) -> None: ...

class GeneralRegistry(_message.Message):
    __slots__ = ("username", "password")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class FromImageRegistry(_message.Message):
    __slots__ = ("aws", "gcp", "general")
    AWS_FIELD_NUMBER: _ClassVar[int]
    GCP_FIELD_NUMBER: _ClassVar[int]
    GENERAL_FIELD_NUMBER: _ClassVar[int]
    aws: AWSRegistry
    gcp: GCPRegistry
    general: GeneralRegistry
    def __init__(self, aws: _Optional[_Union[AWSRegistry, _Mapping]] = ..., gcp: _Optional[_Union[GCPRegistry, _Mapping]] = ..., general: _Optional[_Union[GeneralRegistry, _Mapping]] = ...) -> None: ...

class TemplateConfig(_message.Message):
    __slots__ = ("templateID", "buildID", "memoryMB", "vCpuCount", "diskSizeMB", "kernelVersion", "firecrackerVersion", "startCommand", "hugePages", "readyCommand", "force", "steps", "fromImage", "fromTemplate", "fromImageRegistry", "teamID")
    TEMPLATEID_FIELD_NUMBER: _ClassVar[int]
    BUILDID_FIELD_NUMBER: _ClassVar[int]
    MEMORYMB_FIELD_NUMBER: _ClassVar[int]
    VCPUCOUNT_FIELD_NUMBER: _ClassVar[int]
    DISKSIZEMB_FIELD_NUMBER: _ClassVar[int]
    KERNELVERSION_FIELD_NUMBER: _ClassVar[int]
    FIRECRACKERVERSION_FIELD_NUMBER: _ClassVar[int]
    STARTCOMMAND_FIELD_NUMBER: _ClassVar[int]
    HUGEPAGES_FIELD_NUMBER: _ClassVar[int]
    READYCOMMAND_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    FROMIMAGE_FIELD_NUMBER: _ClassVar[int]
    FROMTEMPLATE_FIELD_NUMBER: _ClassVar[int]
    FROMIMAGEREGISTRY_FIELD_NUMBER: _ClassVar[int]
    TEAMID_FIELD_NUMBER: _ClassVar[int]
    templateID: str
    buildID: str
    memoryMB: int
    vCpuCount: int
    diskSizeMB: int
    kernelVersion: str
    firecrackerVersion: str
    startCommand: str
    hugePages: bool
    readyCommand: str
    force: bool
    steps: _containers.RepeatedCompositeFieldContainer[TemplateStep]
    fromImage: str
    fromTemplate: FromTemplateConfig
    fromImageRegistry: FromImageRegistry
    teamID: str
    def __init__(self, templateID: _Optional[str] = ..., buildID: _Optional[str] = ..., memoryMB: _Optional[int] = ..., vCpuCount: _Optional[int] = ..., diskSizeMB: _Optional[int] = ..., kernelVersion: _Optional[str] = ..., firecrackerVersion: _Optional[str] = ..., startCommand: _Optional[str] = ..., hugePages: _Optional[bool] = ..., readyCommand: _Optional[str] = ..., force: _Optional[bool] = ..., steps: _Optional[_Iterable[_Union[TemplateStep, _Mapping]]] = ..., fromImage: _Optional[str] = ..., fromTemplate: _Optional[_Union[FromTemplateConfig, _Mapping]] = ..., fromImageRegistry: _Optional[_Union[FromImageRegistry, _Mapping]] = ..., teamID: _Optional[str] = ...) -> None: ...

class TemplateCreateRequest(_message.Message):
    __slots__ = ("template", "cacheScope", "version")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CACHESCOPE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    template: TemplateConfig
    cacheScope: str
    version: str
    def __init__(self, template: _Optional[_Union[TemplateConfig, _Mapping]] = ..., cacheScope: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class TemplateStatusRequest(_message.Message):
    __slots__ = ("templateID", "buildID", "offset", "level", "limit", "start", "end", "direction")
    TEMPLATEID_FIELD_NUMBER: _ClassVar[int]
    BUILDID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    templateID: str
    buildID: str
    offset: int
    level: LogLevel
    limit: int
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    direction: LogsDirection
    def __init__(self, templateID: _Optional[str] = ..., buildID: _Optional[str] = ..., offset: _Optional[int] = ..., level: _Optional[_Union[LogLevel, str]] = ..., limit: _Optional[int] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., direction: _Optional[_Union[LogsDirection, str]] = ...) -> None: ...

class TemplateBuildMetadata(_message.Message):
    __slots__ = ("rootfsSizeKey", "envdVersionKey", "kernelVersion", "firecrackerVersion", "schedulingMetadata")
    ROOTFSSIZEKEY_FIELD_NUMBER: _ClassVar[int]
    ENVDVERSIONKEY_FIELD_NUMBER: _ClassVar[int]
    KERNELVERSION_FIELD_NUMBER: _ClassVar[int]
    FIRECRACKERVERSION_FIELD_NUMBER: _ClassVar[int]
    SCHEDULINGMETADATA_FIELD_NUMBER: _ClassVar[int]
    rootfsSizeKey: int
    envdVersionKey: str
    kernelVersion: str
    firecrackerVersion: str
    schedulingMetadata: _orchestrator_pb2.SchedulingMetadata
    def __init__(self, rootfsSizeKey: _Optional[int] = ..., envdVersionKey: _Optional[str] = ..., kernelVersion: _Optional[str] = ..., firecrackerVersion: _Optional[str] = ..., schedulingMetadata: _Optional[_Union[_orchestrator_pb2.SchedulingMetadata, _Mapping]] = ...) -> None: ...

class TemplateBuildLogEntry(_message.Message):
    __slots__ = ("timestamp", "message", "level", "fields")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    message: str
    level: LogLevel
    fields: _containers.ScalarMap[str, str]
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ..., level: _Optional[_Union[LogLevel, str]] = ..., fields: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TemplateBuildStatusReason(_message.Message):
    __slots__ = ("message", "step")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    message: str
    step: str
    def __init__(self, message: _Optional[str] = ..., step: _Optional[str] = ...) -> None: ...

class TemplateBuildStatusResponse(_message.Message):
    __slots__ = ("status", "metadata", "logEntries", "reason")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    LOGENTRIES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    status: TemplateBuildState
    metadata: TemplateBuildMetadata
    logEntries: _containers.RepeatedCompositeFieldContainer[TemplateBuildLogEntry]
    reason: TemplateBuildStatusReason
    def __init__(self, status: _Optional[_Union[TemplateBuildState, str]] = ..., metadata: _Optional[_Union[TemplateBuildMetadata, _Mapping]] = ..., logEntries: _Optional[_Iterable[_Union[TemplateBuildLogEntry, _Mapping]]] = ..., reason: _Optional[_Union[TemplateBuildStatusReason, _Mapping]] = ...) -> None: ...

class TemplateBuildDeleteRequest(_message.Message):
    __slots__ = ("buildID", "templateID")
    BUILDID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATEID_FIELD_NUMBER: _ClassVar[int]
    buildID: str
    templateID: str
    def __init__(self, buildID: _Optional[str] = ..., templateID: _Optional[str] = ...) -> None: ...

class InitLayerFileUploadRequest(_message.Message):
    __slots__ = ("templateID", "hash", "cacheScope")
    TEMPLATEID_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    CACHESCOPE_FIELD_NUMBER: _ClassVar[int]
    templateID: str
    hash: str
    cacheScope: str
    def __init__(self, templateID: _Optional[str] = ..., hash: _Optional[str] = ..., cacheScope: _Optional[str] = ...) -> None: ...

class InitLayerFileUploadResponse(_message.Message):
    __slots__ = ("present", "url")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    present: bool
    url: str
    def __init__(self, present: _Optional[bool] = ..., url: _Optional[str] = ...) -> None: ...

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SandboxResumeRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class SandboxResumeResponse(_message.Message):
    __slots__ = ("orchestrator_ip",)
    ORCHESTRATOR_IP_FIELD_NUMBER: _ClassVar[int]
    orchestrator_ip: str
    def __init__(self, orchestrator_ip: _Optional[str] = ...) -> None: ...

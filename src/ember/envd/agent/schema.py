"""The envd messages, field by field, as E2B's ``process.proto`` and ``filesystem.proto`` declare them.

Field names, numbers and kinds must match the originals exactly: they are the wire format
of both codecs (binary protobuf uses the numbers, Connect JSON the lowerCamel names).
``presence`` marks ``optional`` fields and oneof members, which are sent even when they
hold their default value; every other scalar is left out when it is zero or empty.
Message-typed fields always have presence. ``google.protobuf.Timestamp`` is declared here
too; its JSON form (an RFC 3339 string) is special-cased by the codec.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.Enum):
    STRING = "string"
    BYTES = "bytes"
    BOOL = "bool"
    UINT32 = "uint32"
    INT32 = "int32"
    SINT32 = "sint32"
    INT64 = "int64"
    ENUM = "enum"
    MESSAGE = "message"
    MAP = "map<string,string>"


@dataclass(frozen=True)
class Field:
    name: str
    number: int
    kind: Kind
    type_name: str = ""
    repeated: bool = False
    presence: bool = False
    oneof: str = ""

    @property
    def json_name(self) -> str:
        head, *rest = self.name.split("_")
        return head + "".join(part.capitalize() for part in rest)


TIMESTAMP = "google.protobuf.Timestamp"

_S, _B, _BOOL, _U32, _I32 = Kind.STRING, Kind.BYTES, Kind.BOOL, Kind.UINT32, Kind.INT32
_S32, _I64, _ENUM, _MSG, _MAP = Kind.SINT32, Kind.INT64, Kind.ENUM, Kind.MESSAGE, Kind.MAP


def _opt(name: str, number: int, kind: Kind, type_name: str = "") -> Field:
    return Field(name, number, kind, type_name, presence=True)


def _one(oneof: str, name: str, number: int, kind: Kind, type_name: str = "") -> Field:
    return Field(name, number, kind, type_name, presence=True, oneof=oneof)


ENUMS: dict[str, dict[int, str]] = {
    "process.Signal": {0: "SIGNAL_UNSPECIFIED", 15: "SIGNAL_SIGTERM", 9: "SIGNAL_SIGKILL"},
    "filesystem.FileType": {
        0: "FILE_TYPE_UNSPECIFIED",
        1: "FILE_TYPE_FILE",
        2: "FILE_TYPE_DIRECTORY",
        3: "FILE_TYPE_SYMLINK",
    },
    "filesystem.EventType": {
        0: "EVENT_TYPE_UNSPECIFIED",
        1: "EVENT_TYPE_CREATE",
        2: "EVENT_TYPE_WRITE",
        3: "EVENT_TYPE_REMOVE",
        4: "EVENT_TYPE_RENAME",
        5: "EVENT_TYPE_CHMOD",
    },
}

_SELECTOR = Field("process", 1, _MSG, "process.ProcessSelector")
_ENTRY = Field("entry", 1, _MSG, "filesystem.EntryInfo")
_PATH = Field("path", 1, _S)

MESSAGES: dict[str, tuple[Field, ...]] = {
    TIMESTAMP: (Field("seconds", 1, _I64), Field("nanos", 2, _I32)),
    # process.proto
    "process.PTY": (Field("size", 1, _MSG, "process.PTY.Size"),),
    "process.PTY.Size": (Field("cols", 1, _U32), Field("rows", 2, _U32)),
    "process.ProcessConfig": (
        Field("cmd", 1, _S),
        Field("args", 2, _S, repeated=True),
        Field("envs", 3, _MAP),
        _opt("cwd", 4, _S),
    ),
    "process.ListRequest": (),
    "process.ProcessInfo": (
        Field("config", 1, _MSG, "process.ProcessConfig"),
        Field("pid", 2, _U32),
        _opt("tag", 3, _S),
    ),
    "process.ListResponse": (Field("processes", 1, _MSG, "process.ProcessInfo", repeated=True),),
    "process.StartRequest": (
        Field("process", 1, _MSG, "process.ProcessConfig"),
        Field("pty", 2, _MSG, "process.PTY"),
        _opt("tag", 3, _S),
        _opt("stdin", 4, _BOOL),
    ),
    "process.UpdateRequest": (_SELECTOR, Field("pty", 2, _MSG, "process.PTY")),
    "process.UpdateResponse": (),
    "process.ProcessEvent": (
        _one("event", "start", 1, _MSG, "process.ProcessEvent.StartEvent"),
        _one("event", "data", 2, _MSG, "process.ProcessEvent.DataEvent"),
        _one("event", "end", 3, _MSG, "process.ProcessEvent.EndEvent"),
        _one("event", "keepalive", 4, _MSG, "process.ProcessEvent.KeepAlive"),
    ),
    "process.ProcessEvent.StartEvent": (Field("pid", 1, _U32),),
    "process.ProcessEvent.DataEvent": (
        _one("output", "stdout", 1, _B),
        _one("output", "stderr", 2, _B),
        _one("output", "pty", 3, _B),
    ),
    "process.ProcessEvent.EndEvent": (
        Field("exit_code", 1, _S32),
        Field("exited", 2, _BOOL),
        Field("status", 3, _S),
        _opt("error", 4, _S),
    ),
    "process.ProcessEvent.KeepAlive": (),
    "process.StartResponse": (Field("event", 1, _MSG, "process.ProcessEvent"),),
    "process.ConnectResponse": (Field("event", 1, _MSG, "process.ProcessEvent"),),
    "process.SendInputRequest": (_SELECTOR, Field("input", 2, _MSG, "process.ProcessInput")),
    "process.SendInputResponse": (),
    "process.ProcessInput": (_one("input", "stdin", 1, _B), _one("input", "pty", 2, _B)),
    "process.StreamInputRequest": (
        _one("event", "start", 1, _MSG, "process.StreamInputRequest.StartEvent"),
        _one("event", "data", 2, _MSG, "process.StreamInputRequest.DataEvent"),
        _one("event", "keepalive", 3, _MSG, "process.StreamInputRequest.KeepAlive"),
    ),
    "process.StreamInputRequest.StartEvent": (_SELECTOR,),
    "process.StreamInputRequest.DataEvent": (Field("input", 2, _MSG, "process.ProcessInput"),),
    "process.StreamInputRequest.KeepAlive": (),
    "process.StreamInputResponse": (),
    "process.SendSignalRequest": (_SELECTOR, Field("signal", 2, _ENUM, "process.Signal")),
    "process.SendSignalResponse": (),
    "process.CloseStdinRequest": (_SELECTOR,),
    "process.CloseStdinResponse": (),
    "process.ConnectRequest": (_SELECTOR,),
    "process.ProcessSelector": (_one("selector", "pid", 1, _U32), _one("selector", "tag", 2, _S)),
    # filesystem.proto
    "filesystem.MoveRequest": (Field("source", 1, _S), Field("destination", 2, _S)),
    "filesystem.MoveResponse": (_ENTRY,),
    "filesystem.MakeDirRequest": (_PATH,),
    "filesystem.MakeDirResponse": (_ENTRY,),
    "filesystem.RemoveRequest": (_PATH,),
    "filesystem.RemoveResponse": (),
    "filesystem.StatRequest": (_PATH,),
    "filesystem.StatResponse": (_ENTRY,),
    "filesystem.EntryInfo": (
        Field("name", 1, _S),
        Field("type", 2, _ENUM, "filesystem.FileType"),
        Field("path", 3, _S),
        Field("size", 4, _I64),
        Field("mode", 5, _U32),
        Field("permissions", 6, _S),
        Field("owner", 7, _S),
        Field("group", 8, _S),
        Field("modified_time", 9, _MSG, TIMESTAMP),
        _opt("symlink_target", 10, _S),
        Field("metadata", 11, _MAP),
        Field("is_symlink", 12, _BOOL),
    ),
    "filesystem.ListDirRequest": (_PATH, Field("depth", 2, _U32)),
    "filesystem.ListDirResponse": (Field("entries", 1, _MSG, "filesystem.EntryInfo", repeated=True),),
    "filesystem.WatchDirRequest": (
        _PATH,
        Field("recursive", 2, _BOOL),
        Field("include_entry", 3, _BOOL),
        Field("allow_network_mounts", 4, _BOOL),
    ),
    "filesystem.FilesystemEvent": (
        Field("name", 1, _S),
        Field("type", 2, _ENUM, "filesystem.EventType"),
        Field("entry", 3, _MSG, "filesystem.EntryInfo"),
    ),
    "filesystem.WatchDirResponse": (
        _one("event", "start", 1, _MSG, "filesystem.WatchDirResponse.StartEvent"),
        _one("event", "filesystem", 2, _MSG, "filesystem.FilesystemEvent"),
        _one("event", "keepalive", 3, _MSG, "filesystem.WatchDirResponse.KeepAlive"),
    ),
    "filesystem.WatchDirResponse.StartEvent": (),
    "filesystem.WatchDirResponse.KeepAlive": (),
    "filesystem.CreateWatcherRequest": (
        _PATH,
        Field("recursive", 2, _BOOL),
        Field("include_entry", 3, _BOOL),
        Field("allow_network_mounts", 4, _BOOL),
    ),
    "filesystem.CreateWatcherResponse": (Field("watcher_id", 1, _S),),
    "filesystem.GetWatcherEventsRequest": (Field("watcher_id", 1, _S),),
    "filesystem.GetWatcherEventsResponse": (
        Field("events", 1, _MSG, "filesystem.FilesystemEvent", repeated=True),
    ),
    "filesystem.RemoveWatcherRequest": (Field("watcher_id", 1, _S),),
    "filesystem.RemoveWatcherResponse": (),
}

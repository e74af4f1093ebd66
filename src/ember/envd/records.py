"""What the host-side envd client returns: frozen records built from envd's messages."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_FILE_TYPES = {1: "file", 2: "dir", 3: "symlink"}


class FileType(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class EntryInfo:
    """One filesystem entry in the guest (``filesystem.EntryInfo``)."""

    name: str
    type: FileType
    path: str
    size_bytes: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_time: dt.datetime | None
    symlink_target: str | None = None

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> EntryInfo:
        modified = message.get("modified_time")
        seconds = int(modified.get("seconds", 0)) + int(modified.get("nanos", 0)) / 1e9 if modified else None
        return cls(
            name=message.get("name", ""),
            type=FileType(_FILE_TYPES.get(int(message.get("type", 0)), "unknown")),
            path=message.get("path", ""),
            size_bytes=int(message.get("size", 0)),
            mode=int(message.get("mode", 0)),
            permissions=message.get("permissions", ""),
            owner=message.get("owner", ""),
            group=message.get("group", ""),
            modified_time=None if seconds is None else dt.datetime.fromtimestamp(seconds, tz=dt.UTC),
            symlink_target=message.get("symlink_target"),
        )


@dataclass(frozen=True)
class ProcessInfo:
    """A process the agent is running (``process.ProcessInfo``)."""

    pid: int
    tag: str | None
    cmd: str
    args: tuple[str, ...]
    envs: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> ProcessInfo:
        config = message.get("config", {})
        return cls(
            pid=int(message.get("pid", 0)),
            tag=message.get("tag"),
            cmd=config.get("cmd", ""),
            args=tuple(config.get("args", ())),
            envs=dict(config.get("envs", {})),
            cwd=config.get("cwd"),
        )


@dataclass(frozen=True)
class ProcessResult:
    """How a process ended and everything it wrote. ``exit_code`` is -1 when a signal ended it."""

    pid: int
    exit_code: int
    stdout: bytes
    stderr: bytes
    status: str = ""
    error: str | None = None


@dataclass(frozen=True)
class GuestMetrics:
    """One sample of envd's ``GET /metrics``: the guest's own view of its CPU, memory and root disk."""

    timestamp: dt.datetime
    cpu_count: int
    cpu_used_pct: float
    mem_total: int
    mem_used: int
    mem_cache: int
    disk_used: int
    disk_total: int

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> GuestMetrics:
        return cls(
            timestamp=dt.datetime.fromtimestamp(int(value.get("ts", 0)), tz=dt.UTC),
            cpu_count=int(value.get("cpu_count", 0)),
            cpu_used_pct=float(value.get("cpu_used_pct", 0.0)),
            mem_total=int(value.get("mem_total", 0)),
            mem_used=int(value.get("mem_used", 0)),
            mem_cache=int(value.get("mem_cache", 0)),
            disk_used=int(value.get("disk_used", 0)),
            disk_total=int(value.get("disk_total", 0)),
        )

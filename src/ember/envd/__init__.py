"""envd: the agent inside every sandbox, and the host's client for it.

``agent/`` is the guest side (standard library only; ``build_agent`` packs it into the
single executable the guest runs as ``/usr/bin/envd``). ``EnvdClient`` is the host side:
the orchestrator's ``/init``, health checks and build commands go through it.
"""

from ember.envd.bundle import build_agent
from ember.envd.client import EnvdClient, EnvdError, ProcessHandle
from ember.envd.records import EntryInfo, FileType, ProcessInfo, ProcessResult

__all__ = [
    "EntryInfo",
    "EnvdClient",
    "EnvdError",
    "FileType",
    "ProcessHandle",
    "ProcessInfo",
    "ProcessResult",
    "build_agent",
]

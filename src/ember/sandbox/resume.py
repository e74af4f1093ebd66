"""What a resume needs before any sandbox runs: the node's storage, and a build's parts fetched once.

``open_read_storage`` is the one place that decides how a node reads builds: a local
directory directly, a bucket through the 4 MiB chunk cache in SNAPSHOT_CACHE_DIR (shared
by every sandbox process of the node, since chunk files are written atomically).

``load_build_info`` reads metadata.json (refusing incomplete builds, builds of a VMM this
node cannot run, corrupt metadata), the snapfile (the store's own file when local, else
one cached download per build in the node's template cache, bounded by ``buildcache``) and
the headers' sizes.

``save_prefetch`` rewrites a build's metadata.json with prefetch data (``resume-build
-optimize``, recorded by ``Sandbox.accesses`` over resumes without prefetch).
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

from ember.build import MemoryPrefetch, TemplateMetadata, parse_metadata
from ember.environment import Environment
from ember.errors import BuildError, ObjectNotFound, StorageError, VmError
from ember.header import deserialize_header
from ember.sandbox.errors import BuildNotFound
from ember.sandbox.records import BuildInfo, VmmKind
from ember.storage import MEMFILE, ROOTFS, BuildPaths, ChunkCache, LocalStorage, Storage, open_storage
from ember.storage.base import atomic_write
from ember.vmm.qemu import read_header

QEMU_PREFIX = "qemu-"
TEMPLATE_CACHE = "template"


def open_read_storage(url: str, env: Environment) -> Storage:
    """The storage at ``url`` as a node reads it: remote stores behind the node's chunk cache."""
    storage = open_storage(url)
    if isinstance(storage, LocalStorage):
        # The store's root may not exist yet (<storage>/templates), but no part of its path may be a file.
        existing = next((path for path in (storage.root, *storage.root.parents) if path.exists()), None)
        if existing is not None and not existing.is_dir():
            raise BuildError(f"-storage {url}: {existing} is a file, not a directory of builds")
        return storage
    try:
        env.snapshot_cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"cannot create the chunk cache {env.snapshot_cache_dir}: {exc}; set SNAPSHOT_CACHE_DIR"
        ) from exc
    return ChunkCache(storage, env.snapshot_cache_dir)


def vmm_of(metadata: TemplateMetadata) -> VmmKind:
    """QEMU builds record ``qemu-<version>``; every other value names a Firecracker version."""
    version = metadata.template.firecracker_version
    return VmmKind.QEMU if version.startswith(QEMU_PREFIX) else VmmKind.FIRECRACKER


def _header_size(storage: Storage, build_id: uuid.UUID, name: str) -> int:
    return deserialize_header(storage.get(BuildPaths(build_id).header(name))).metadata.size


def read_build_metadata(storage: Storage, build_id: uuid.UUID) -> TemplateMetadata:
    """``build_id``'s metadata.json; ``BuildNotFound`` when the build is missing or unfinished."""
    try:
        raw = storage.get(BuildPaths(build_id).metadata)
    except ObjectNotFound as exc:
        raise BuildNotFound(
            f"build {build_id} is not complete in {storage.url}: it has no metadata.json "
            "(it does not exist, or a create-build or pause did not finish); pick a finished build"
        ) from exc
    return parse_metadata(raw, build_id)


def load_build_info(storage: Storage, build_id: uuid.UUID, env: Environment) -> BuildInfo:
    """Fetch and check what every resume of ``build_id`` needs (see the module docstring)."""
    metadata = read_build_metadata(storage, build_id).require_resumable(build_id)
    if metadata.filesystem_only:
        raise BuildError(
            f"build {build_id} is filesystem-only (no memory snapshot): start it with a filesystem boot"
        )
    vmm = vmm_of(metadata)
    snapfile = _local_snapfile(storage, build_id, env)
    memory_bytes = _header_size(storage, build_id, MEMFILE)
    rootfs_bytes = _header_size(storage, build_id, ROOTFS)
    if vmm is VmmKind.QEMU:
        try:
            machine, _ = read_header(snapfile)
        except VmError as exc:
            raise BuildError(f"build {build_id} has an unusable snapfile: {exc}") from exc
        if machine.memory_mib << 20 != memory_bytes:
            raise BuildError(
                f"build {build_id} is inconsistent: its snapfile describes {machine.memory_mib} MiB of RAM "
                f"but its memfile header {memory_bytes} bytes; the build is corrupt"
            )
        return BuildInfo(
            build_id, metadata, vmm, snapfile, machine, memory_bytes, machine.vcpu_count, rootfs_bytes
        )
    return BuildInfo(build_id, metadata, vmm, snapfile, None, memory_bytes, 0, rootfs_bytes)


def _local_snapfile(storage: Storage, build_id: uuid.UUID, env: Environment) -> Path:
    """The snapfile as a local file: the object itself in a local store, else a download kept per build."""
    key = BuildPaths(build_id).snapfile
    if isinstance(storage, LocalStorage):
        path = storage.path_of(key)
        if not path.is_file():
            raise BuildError(
                f"build {build_id} in {storage.url} has metadata.json but no snapfile: it is corrupt"
            )
        return path
    cached = env.orchestrator_base_path / TEMPLATE_CACHE / str(build_id) / "snapfile"
    if not cached.is_file():
        data = storage.get(key)
        atomic_write(cached, lambda target: target.write(data), fsync=False)
    return cached


def save_prefetch(storage: Storage, build_id: uuid.UUID, prefetch: MemoryPrefetch) -> TemplateMetadata:
    """Rewrite the build's metadata.json with ``prefetch`` (a single atomic put); the new metadata."""
    key = BuildPaths(build_id).metadata
    metadata = dataclasses.replace(parse_metadata(storage.get(key)), prefetch=prefetch)
    storage.put(key, metadata.to_json())
    return metadata

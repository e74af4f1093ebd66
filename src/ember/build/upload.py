"""Writing a finished build to storage so that it is either complete or invisible.

Readers treat a build as complete once ``{build}/metadata.json`` exists (the original's
rule, and copy-build's). So every other object is stored first, in parallel, and
metadata.json only after all of them succeeded: a crash or an error part way leaves
objects that no tool treats as a build, never a build with a missing piece.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from ember.build.metadata import TemplateMetadata
from ember.errors import BuildError
from ember.header import Header, serialize_header
from ember.storage import MEMFILE, ROOTFS, BuildPaths, Storage

UPLOAD_WORKERS = 8


@dataclass(frozen=True)
class BuildArtifacts:
    """The local files and headers of one build layer, ready to store.

    ``memfile_*`` and ``snapfile`` are None for a filesystem-only snapshot, which has no memory.
    """

    build_id: uuid.UUID
    metadata: TemplateMetadata
    rootfs_header: Header
    rootfs_data: Path
    memfile_header: Header | None = None
    memfile_data: Path | None = None
    snapfile: Path | None = None


def upload_build(storage: Storage, artifacts: BuildArtifacts, *, consume_files: bool = False) -> None:
    """Store every object of the build, metadata.json last; raises the first failure.

    ``consume_files`` says the artifact files are scratch the caller drops afterwards, so a
    local store may rename them into place (``Storage.move_file``) instead of copying them.
    """
    paths = BuildPaths(artifacts.build_id)
    for header in (artifacts.rootfs_header, artifacts.memfile_header):
        if header is not None and header.metadata.build_id != artifacts.build_id:
            raise BuildError(
                f"header of build {header.metadata.build_id} cannot be stored as build {artifacts.build_id}"
            )
    blobs: list[tuple[str, bytes]] = [(paths.header(ROOTFS), _header_bytes(artifacts.rootfs_header))]
    files: list[tuple[str, Path]] = [(paths.data_object(ROOTFS), artifacts.rootfs_data)]
    if artifacts.memfile_header is not None:
        if artifacts.memfile_data is None or artifacts.snapfile is None:
            raise BuildError("a build with memory needs its memfile data and its snapfile")
        blobs.append((paths.header(MEMFILE), _header_bytes(artifacts.memfile_header)))
        files += [(paths.data_object(MEMFILE), artifacts.memfile_data), (paths.snapfile, artifacts.snapfile)]

    with ThreadPoolExecutor(max_workers=UPLOAD_WORKERS) as pool:
        pending = [pool.submit(storage.put, key, data) for key, data in blobs]
        store_file = storage.move_file if consume_files else storage.put_file
        pending += [pool.submit(store_file, key, path) for key, path in files]
        for future in pending:
            future.result()
    storage.put(paths.metadata, artifacts.metadata.to_json())


def _header_bytes(header: Header) -> bytes:
    """The stored form: the in-memory 'upload pending' mark is never persisted."""
    return serialize_header(replace(header, pending_upload=False))

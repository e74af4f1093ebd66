"""Writing a finished build to storage so that it is either complete or invisible.

Readers treat a build as complete once ``{build}/metadata.json`` exists (the original's
rule, and copy-build's). So every other object is stored first, in parallel, and
metadata.json only after all of them succeeded: a crash or an error part way leaves
objects that no tool treats as a build, never a build with a missing piece.

Two writers given the same build id (two pauses, a create racing a pause) would each
overwrite the other's objects and leave a build mixing both. ``claim_build`` stops that:
before writing anything, a writer creates ``{build}/.ember-claim`` exclusively
(``Storage.create_exclusive``), so exactly one writer owns the id and the others fail
before they store a byte.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from ember.build.metadata import TemplateMetadata
from ember.errors import BuildError, EmberError, ObjectExists
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


def claim_build(storage: Storage, build_id: uuid.UUID | str, writer: str) -> None:
    """Make this process the only writer of ``build_id`` in ``storage``, before it stores anything.

    ``writer`` says who claims it in words (``"resume-build -pause of <parent>"``); it is
    recorded in the marker with the host, pid and time, and shown to the writer that loses.
    Raises ``BuildError`` when the build already exists (it has a metadata.json) or another
    writer claimed the id first.
    """
    paths = BuildPaths(build_id)
    if storage.exists(paths.metadata):
        raise BuildError(
            f"build {paths.build_id} already exists in {storage.url} (it has a metadata.json): "
            "pick a new -to-build / build id"
        )
    marker = json.dumps(
        {
            "writer": writer,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "nonce": secrets.token_hex(8),
        }
    ).encode()
    try:
        storage.create_exclusive(paths.claim, marker)
    except ObjectExists as exc:
        recorded = _read_marker(storage, paths.claim)
        if recorded == marker:
            return  # a retried request whose first attempt had created it
        if _writer_is_gone(recorded):
            raise BuildError(
                f"build {paths.build_id} in {storage.url} was claimed by another writer "
                f"({_describe_claim(recorded)}), which no longer runs on this host: the build was "
                f"abandoned; pick a new -to-build / build id, or delete its folder {paths.build_id} "
                "to reuse the id (ember gc removes it once it is older than its grace)"
            ) from exc
        raise BuildError(
            f"build {paths.build_id} in {storage.url} was claimed by another writer "
            f"({_describe_claim(recorded)}): it is being written or was abandoned; "
            "pick a new -to-build / build id"
        ) from exc


def _read_marker(storage: Storage, key: str) -> bytes | None:
    try:
        return storage.get(key)
    except EmberError:
        return None


def _writer_is_gone(marker: bytes | None) -> bool:
    """Whether the marker names a process of this host that has exited (a killed create or pause).

    Only a hint for the message: a pid may have been reused, so the claim is never taken over.
    """
    try:
        document = json.loads(marker or b"")
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(document, dict) or document.get("hostname") != socket.gethostname():
        return False
    pid = document.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _describe_claim(marker: bytes | None) -> str:
    """Who and when, from a marker; what is unreadable about it otherwise."""
    try:
        document = json.loads(marker or b"")
    except (ValueError, UnicodeDecodeError):
        document = None
    if not isinstance(document, dict):
        return "its claim marker is unreadable"
    return (
        f"{document.get('writer', 'unknown writer')} on host {document.get('hostname', '?')}, "
        f"pid {document.get('pid', '?')}, at {document.get('time', '?')}"
    )

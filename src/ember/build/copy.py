"""Copy a build and every object it references to another storage (facts file 7.3).

What a build references::

    {build}/metadata.json            always; copied LAST
    {build}/memfile.header           unless metadata says filesystem_only
    {build}/snapfile                 unless filesystem_only
    {X}/memfile[.lz4|.zstd]          for every non-nil build X in memfile.header's mappings
    {build}/rootfs.ext4.header       always
    {Y}/rootfs.ext4[.lz4|.zstd]      for every non-nil build Y in rootfs.ext4.header's mappings

The suffix of a data object comes from that build's frame table (``frame_table_of``). A
build stored without headers (legacy) references only its own data objects.

Guarantees:

* ``metadata.json`` is written only after every other object copied, so an interrupted or
  failed copy never leaves a build that looks complete at the destination;
* each object appears at the destination whole or not at all;
* an object whose destination copy has the same non-zero CRC32C as the source is skipped,
  so re-running a copy only transfers what is missing or different;
* a referenced object missing from the source raises ``BuildError`` naming it;
* before ``metadata.json`` is written, every copied data object is checked to hold all the
  bytes the headers map to it (``integrity``): a truncated source object fails the copy with
  ``BuildError`` instead of producing a complete-looking build;
* in a local destination, temporaries left in the build folders by an interrupted earlier
  copy (their writer is gone) are removed first and reported (``StaleTemporaryRemoved``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from ember.build.integrity import DataRequirement, check_data_objects, data_requirements
from ember.build.metadata import parse_metadata
from ember.build.reader import frame_table_of, load_header
from ember.build.transfer import copy_object
from ember.errors import BuildError, ObjectNotFound, UsageError
from ember.storage import MEMFILE, ROOTFS, BuildPaths, LocalStorage, Storage, sweep_stale_temporaries

DEFAULT_WORKERS = 20


@dataclass(frozen=True)
class CopyStarted:
    """The object list is known; ``files`` objects will be checked and copied."""

    files: int

    @property
    def message(self) -> str:
        return f"Copying {self.files} files"


@dataclass(frozen=True)
class FileStarted:
    """A worker starts on one object."""

    source: str
    destination: str

    @property
    def message(self) -> str:
        return f"+ copying '{self.source}' to '{self.destination}'"


@dataclass(frozen=True)
class FileFinished:
    """One object is done: the ``done``-th of ``files`` to finish."""

    done: int
    files: int
    destination: str
    skipped: bool
    size_bytes: int

    @property
    def message(self) -> str:
        outcome = "already exists, skipping" if self.skipped else "copied"
        return f"-> [{self.done}/{self.files}] '{self.destination}' {outcome}"


@dataclass(frozen=True)
class StaleTemporaryRemoved:
    """A temporary of an interrupted earlier write, whose writer is gone, was removed before copying."""

    path: Path

    @property
    def message(self) -> str:
        return f"- removed '{self.path}': a temporary left by an interrupted copy or upload"


CopyEvent = StaleTemporaryRemoved | CopyStarted | FileStarted | FileFinished


@dataclass(frozen=True)
class CopyReport:
    """What a finished copy did; ``files == copied + skipped``."""

    build_id: str
    files: int
    copied: int
    skipped: int
    bytes_copied: int
    removed_temporaries: tuple[Path, ...] = ()


def display_name(storage: Storage, key: str) -> str:
    """How an object is named in progress lines: the storage URL joined with the key."""
    return f"{storage.url.rstrip('/')}/{key}"


def _data_objects(source: Storage, build_id: str, file_name: str) -> tuple[list[str], list[DataRequirement]]:
    """The header key (if the build has one) and every data object it reads, and how long each must be."""
    paths = BuildPaths(build_id)
    header_key = paths.header(file_name)
    header = load_header(source, header_key)
    if header is None:
        legacy_key = paths.data_object(file_name)
        if not source.exists(legacy_key):
            raise BuildError(
                f"build {build_id} in {source.url} has neither {header_key!r} nor {legacy_key!r}: "
                "the build is incomplete; check the build id and the source storage"
            )
        return [legacy_key], []
    keys = [header_key]
    for build in header.referenced_builds():
        frames = frame_table_of(source, header, build, file_name)
        compression = 0 if frames is None else int(frames.compression_type)
        keys.append(BuildPaths(build).data_object(file_name, compression))
    return keys, data_requirements(source, header, file_name)


def _references(build_id: str, source: Storage) -> tuple[bytes, list[str], list[DataRequirement]]:
    """metadata.json's bytes, the other objects' keys, and what the headers need of the data objects."""
    paths = BuildPaths(build_id)
    try:
        metadata_bytes = source.get(paths.metadata)
    except ObjectNotFound as exc:
        raise BuildError(
            f"build {paths.build_id} has no metadata.json in {source.url}: it does not exist there or "
            "never finished uploading; check the build id and the source storage"
        ) from exc
    keys, requirements = _data_objects(source, paths.build_id, ROOTFS)
    if not parse_metadata(metadata_bytes, paths.build_id).filesystem_only:
        memfile_keys, memfile_requirements = _data_objects(source, paths.build_id, MEMFILE)
        keys += [paths.snapfile, *memfile_keys]
        requirements += memfile_requirements
    return metadata_bytes, sorted(set(keys)), requirements


def referenced_objects(build_id: uuid.UUID | str, source: Storage) -> tuple[bytes, list[str]]:
    """``metadata.json``'s bytes and the sorted keys of every other object the build references."""
    metadata_bytes, keys, _ = _references(BuildPaths(build_id).build_id, source)
    return metadata_bytes, keys


class _Copier:
    """One copy run: counts finished files and serializes progress events across workers."""

    def __init__(
        self, source: Storage, destination: Storage, files: int, progress: Callable[[CopyEvent], None]
    ):
        self.source = source
        self.destination = destination
        self.files = files
        self._progress = progress
        self._lock = threading.Lock()
        self.done = self.copied = self.bytes_copied = 0

    def emit(self, event: CopyEvent) -> None:
        with self._lock:
            self._progress(event)

    def same_content(self, key: str) -> bool:
        if not self.destination.exists(key):
            return False
        source_crc = self.source.crc32c(key)
        return bool(source_crc) and source_crc == self.destination.crc32c(key)

    def copy(self, key: str, put: Callable[[], int] | None = None) -> None:
        """Copy ``key`` unless the destination already has it; ``put`` overrides the object copy."""
        destination_name = display_name(self.destination, key)
        self.emit(FileStarted(display_name(self.source, key), destination_name))
        try:
            skipped = self.same_content(key)
            if skipped:
                size_bytes = 0
            elif put is None:
                size_bytes = copy_object(self.source, self.destination, key)
            else:
                size_bytes = put()
        except ObjectNotFound as exc:
            raise BuildError(
                f"{display_name(self.source, key)} is referenced by the build but missing from the source: "
                "the build or one of its ancestors is incomplete there; copy that build first"
            ) from exc
        with self._lock:
            self.done += 1
            if not skipped:
                self.copied += 1
                self.bytes_copied += size_bytes
            self._progress(FileFinished(self.done, self.files, destination_name, skipped, size_bytes))


def copy_build(
    build_id: uuid.UUID | str,
    source: Storage,
    destination: Storage,
    *,
    workers: int = DEFAULT_WORKERS,
    progress: Callable[[CopyEvent], None] | None = None,
) -> CopyReport:
    """Copy the build and everything it references; ``metadata.json`` last. See the module guarantees."""
    if workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")
    paths = BuildPaths(build_id)
    metadata_bytes, keys, requirements = _references(paths.build_id, source)
    emit = progress or (lambda _event: None)
    removed = _sweep_destination(destination, [paths.metadata, *keys])
    for path in removed:
        emit(StaleTemporaryRemoved(path))
    copier = _Copier(source, destination, len(keys) + 1, emit)
    copier.emit(CopyStarted(copier.files))

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="copy-build") as pool:
        futures = [pool.submit(copier.copy, key) for key in keys]
        wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            future.cancel()
    for future in futures:
        failure = None if future.cancelled() else future.exception()
        if failure is not None:
            raise failure

    _check_copied_data(paths.build_id, destination, requirements)

    def put_metadata() -> int:
        destination.put(paths.metadata, metadata_bytes)
        return len(metadata_bytes)

    copier.copy(paths.metadata, put_metadata)
    return CopyReport(
        build_id=paths.build_id,
        files=copier.files,
        copied=copier.copied,
        skipped=copier.files - copier.copied,
        bytes_copied=copier.bytes_copied,
        removed_temporaries=tuple(removed),
    )


def _sweep_destination(destination: Storage, keys: list[str]) -> list[Path]:
    """Remove dead writers' temporaries from the local build folders this copy writes into."""
    if not isinstance(destination, LocalStorage):
        return []
    folders = sorted({destination.path_of(key).parent for key in keys})
    return [path for folder in folders for path in sweep_stale_temporaries(folder)]


def _check_copied_data(build_id: str, destination: Storage, requirements: list[DataRequirement]) -> None:
    """Refuse to complete the copy when a data object holds fewer bytes than the headers read."""
    problems = [check.problem for check in check_data_objects(destination, requirements) if not check.ok]
    if problems:
        raise BuildError(
            f"cannot complete the copy of build {build_id} to {destination.url}: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
            + "; metadata.json was not written, so the copy is not a build: re-upload that build at "
            "the source, then copy again"
        )

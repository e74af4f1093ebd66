"""``pause_artifacts``: what a pause hands ``upload_build``, with memory and filesystem-only."""

from __future__ import annotations

import uuid
from pathlib import Path

from ember.build import TemplateInfo, TemplateMetadata, parse_metadata, upload_build
from ember.header import PAGE_SIZE, empty_device_header
from ember.sandbox.guest import ExportedMemory
from ember.sandbox.pause import pause_artifacts
from ember.storage import MEMFILE, ROOTFS, SNAPFILE, BuildPaths, MemoryStorage

BUILD = uuid.UUID("00000000-0000-4000-8000-0000000000f5")


def _scratch(tmp_path: Path) -> Path:
    for name in (ROOTFS, MEMFILE, SNAPFILE):
        (tmp_path / name).write_bytes(name.encode())
    return tmp_path


def _metadata(filesystem_only: bool) -> TemplateMetadata:
    return TemplateMetadata(version=2, template=TemplateInfo(str(BUILD)), filesystem_only=filesystem_only)


def test_a_filesystem_only_pause_stores_the_rootfs_and_metadata_alone(tmp_path: Path) -> None:
    scratch = _scratch(tmp_path)
    rootfs = empty_device_header(BUILD, 16 * PAGE_SIZE, PAGE_SIZE)
    artifacts = pause_artifacts(BUILD, _metadata(True), rootfs, scratch, None)
    assert (artifacts.memfile_header, artifacts.memfile_data, artifacts.snapfile) == (None, None, None)
    storage = MemoryStorage()
    upload_build(storage, artifacts)
    paths = BuildPaths(BUILD)
    assert sorted(storage.list(f"{BUILD}/")) == sorted(
        [paths.metadata, paths.header(ROOTFS), paths.data_object(ROOTFS)]
    )
    assert parse_metadata(storage.get(paths.metadata)).filesystem_only


def test_a_pause_with_memory_stores_the_memfile_and_snapfile_too(tmp_path: Path) -> None:
    scratch = _scratch(tmp_path)
    rootfs = empty_device_header(BUILD, 16 * PAGE_SIZE, PAGE_SIZE)
    memory = ExportedMemory(
        empty_device_header(BUILD, 8 * PAGE_SIZE, PAGE_SIZE), scratch / MEMFILE, scratch / SNAPFILE
    )
    storage = MemoryStorage()
    upload_build(storage, pause_artifacts(BUILD, _metadata(False), rootfs, scratch, memory))
    paths = BuildPaths(BUILD)
    assert {paths.header(MEMFILE), paths.data_object(MEMFILE), paths.snapfile} <= set(
        storage.list(f"{BUILD}/")
    )
    assert storage.get(paths.snapfile) == SNAPFILE.encode()
    assert not parse_metadata(storage.get(paths.metadata)).filesystem_only

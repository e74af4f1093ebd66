"""Small synthetic builds with real headers, for gc's tests and benchmark (no VM, a few KiB each).

``TimedMemoryStorage`` is a ``MemoryStorage`` that remembers when each object was stored and
lists objects with sizes and times: the ``list_objects`` interface gc proposes for
``Storage``, with a clock a test can set.

Each build is a diff layer over its parent's headers (``DiffMetadata.to_diff_header``), the
way a pause writes one: its dirty blocks packed in ascending order into its data objects,
headers, a placeholder snapfile, and metadata.json last (unless asked to stop before it,
which leaves an incomplete build). Every dirty block holds one repeated byte that
``fill_byte`` recomputes, so a reader can check any layer without a flat copy; the layer's
``dirty`` and ``empty`` block lists are kept so a test can rebuild the image independently.
"""

from __future__ import annotations

import builtins
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ember.build.metadata import TemplateInfo, TemplateMetadata
from ember.errors import EmberError
from ember.header import PAGE_SIZE, DiffMetadata, Header, empty_device_header, serialize_header
from ember.storage import MEMFILE, ROOTFS, BuildPaths, MemoryStorage, ObjectInfo, Storage

SYNTHETIC_BLOCKS = 16
"""Blocks per device (of ``PAGE_SIZE``): 64 KiB devices keep 1,000 builds in a few dozen MiB."""


@dataclass(frozen=True)
class SyntheticBuild:
    """One stored layer: its headers, and per device the blocks it wrote and zeroed."""

    build_id: uuid.UUID
    parent: uuid.UUID | None
    headers: dict[str, Header]
    dirty: dict[str, tuple[int, ...]]
    empty: dict[str, tuple[int, ...]]

    @property
    def filesystem_only(self) -> bool:
        return MEMFILE not in self.headers


def fill_byte(build_id: uuid.UUID, file_name: str, block: int) -> int:
    """The byte every byte of ``block`` holds in the layer ``build_id`` wrote it (never 0)."""
    return (build_id.int + block * 7 + (3 if file_name == MEMFILE else 0)) % 255 + 1


def _layer_blocks(rng: random.Random, first: bool) -> tuple[list[int], list[int]]:
    if first:
        dirty = [
            block for block in range(SYNTHETIC_BLOCKS) if block < SYNTHETIC_BLOCKS // 2 or rng.random() < 0.3
        ]
        return dirty, []
    dirty = [block for block in range(SYNTHETIC_BLOCKS) if rng.random() < 0.25]
    empty = [block for block in range(SYNTHETIC_BLOCKS) if block not in dirty and rng.random() < 0.1]
    return dirty, empty


def write_synthetic_build(
    storage: Storage,
    build_id: uuid.UUID,
    parent: SyntheticBuild | None = None,
    *,
    seed: int | None = None,
    filesystem_only: bool = False,
    complete: bool = True,
) -> SyntheticBuild:
    """Store one layer over ``parent`` (a fresh template layer when None); metadata.json last.

    The blocks it writes come from ``seed`` (from the build id when None): a test that needs
    every layer to stay visible under its children fixes the seeds, since a child may
    overwrite all of a parent's few blocks, and then nothing reads from that parent.
    """
    rng = random.Random(build_id.int if seed is None else seed)
    paths = BuildPaths(build_id)
    headers: dict[str, Header] = {}
    dirty_of: dict[str, tuple[int, ...]] = {}
    empty_of: dict[str, tuple[int, ...]] = {}
    for file_name in (ROOTFS,) if filesystem_only else (MEMFILE, ROOTFS):
        base = None if parent is None else parent.headers.get(file_name)
        dirty, empty = _layer_blocks(rng, base is None)
        if base is None:
            base = empty_device_header(build_id, SYNTHETIC_BLOCKS * PAGE_SIZE, PAGE_SIZE)
        header = DiffMetadata(
            np.array(dirty, dtype=np.uint64), np.array(empty, dtype=np.uint64), PAGE_SIZE
        ).to_diff_header(base, build_id)
        data = b"".join(bytes([fill_byte(build_id, file_name, block)]) * PAGE_SIZE for block in dirty)
        storage.put(paths.data_object(file_name), data)
        storage.put(paths.header(file_name), serialize_header(header))
        headers[file_name] = header
        dirty_of[file_name] = tuple(dirty)
        empty_of[file_name] = tuple(empty)
    if not filesystem_only:
        storage.put(paths.snapfile, f"synthetic snapfile of {build_id}: no VM state\n".encode())
    if complete:
        metadata = TemplateMetadata(
            version=2,
            template=TemplateInfo(str(build_id), "vmlinux-6.1.158", "v1.14.1_431f1fc"),
            filesystem_only=filesystem_only,
        )
        storage.put(paths.metadata, metadata.to_json())
    return SyntheticBuild(build_id, None if parent is None else parent.build_id, headers, dirty_of, empty_of)


def write_synthetic_chain(
    storage: Storage,
    build_ids: list[uuid.UUID],
    parent: SyntheticBuild | None = None,
    *,
    seed: int | None = None,
    filesystem_only: bool = False,
) -> list[SyntheticBuild]:
    """One build per id, each over the previous (the first over ``parent``); all complete.

    With ``seed``, layer ``i`` is written with seed ``seed + i`` (see ``write_synthetic_build``).
    """
    chain: list[SyntheticBuild] = []
    for index, build_id in enumerate(build_ids):
        layer_seed = None if seed is None else seed + index
        parent = write_synthetic_build(
            storage, build_id, parent, seed=layer_seed, filesystem_only=filesystem_only
        )
        chain.append(parent)
    return chain


class TimedMemoryStorage(MemoryStorage):
    """A ``MemoryStorage`` whose objects carry the time they were stored (by ``clock``, the wall clock)."""

    def __init__(self, name: str = "", clock: Callable[[], float] = time.time) -> None:
        super().__init__(name)
        self.clock = clock
        self._times: dict[str, float] = {}
        self._times_lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        super().put(key, data)
        with self._times_lock:
            self._times[key] = self.clock()

    def create_exclusive(self, key: str, data: bytes) -> None:
        super().create_exclusive(key, data)
        with self._times_lock:
            self._times[key] = self.clock()

    def delete_prefix(self, prefix: str) -> int:
        count = super().delete_prefix(prefix)
        with self._times_lock:
            for key in [key for key in self._times if key.startswith(prefix)]:
                del self._times[key]
        return count

    def list_objects(self, prefix: str) -> builtins.list[ObjectInfo]:
        found = []
        for key in self.list(prefix):
            try:
                size_bytes = MemoryStorage.size(self, key)
            except EmberError:
                continue
            with self._times_lock:
                found.append(ObjectInfo(key, size_bytes, self._times.get(key)))
        return found

"""Synthetic build chains with known content, for the demo, the CLI tests and the benchmarks.

A chain is written the way pauses write it: each layer's dirty blocks are packed in
ascending order into its data objects, its headers are ``DiffMetadata.to_diff_header`` of
the parent's, and metadata.json goes last. Every dirty block is filled with one byte that
``expected_block`` can recompute, so a reader of any layer can be checked block by block
without keeping a flat copy. There is no VM here: the snapfile is a labelled placeholder.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ember.build.metadata import TemplateInfo, TemplateMetadata
from ember.build.upload import BuildArtifacts, upload_build
from ember.header import DiffMetadata, Header, empty_device_header
from ember.storage import Storage

SAMPLE_KERNEL = "vmlinux-6.1.158"
SAMPLE_FIRECRACKER = "v1.14.1_431f1fc"


@dataclass(frozen=True)
class SampleDevice:
    size_bytes: int
    block_size: int

    def empty(self, build_id: uuid.UUID) -> Header:
        return empty_device_header(build_id, self.size_bytes, self.block_size)


SAMPLE_MEMFILE = SampleDevice(256 << 20, 2 << 20)
SAMPLE_ROOTFS = SampleDevice(64 << 20, 4 << 10)


def fill_byte(generation: int, block: int) -> int:
    """The byte a sample layer writes into every byte of a dirty block (never 0)."""
    return (generation * 37 + block * 11) % 255 + 1


def layer_blocks(generation: int, blocks: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """Dirty and empty block indices of layer ``generation`` (disjoint, sorted, reproducible).

    Layer 1 is a fresh image: its first 40 % and a few runs beyond are dirty, the rest
    empty. Later layers dirty a few runs (about 8 % of the device) and zero one run, the
    clustered pattern a guest's writes leave, which keeps the demo's headers readable.
    """
    rng = np.random.default_rng(generation)
    run = max(blocks // 64, 1)
    dirty = np.zeros(blocks, dtype=bool)
    for start in rng.integers(0, blocks - run, size=5):
        dirty[start : start + run] = True
    if generation == 1:
        dirty[: blocks * 2 // 5] = True
        return np.flatnonzero(dirty).astype(np.uint64), np.flatnonzero(~dirty).astype(np.uint64)
    empty = np.zeros(blocks, dtype=bool)
    start = int(rng.integers(0, blocks - run))
    empty[start : start + run] = True
    dirty &= ~empty
    return np.flatnonzero(dirty).astype(np.uint64), np.flatnonzero(empty).astype(np.uint64)


def _write_layer(
    directory: Path, name: str, generation: int, device: SampleDevice, parent: Header, build_id: uuid.UUID
) -> tuple[Header, Path]:
    dirty, empty = layer_blocks(generation, device.size_bytes // device.block_size)
    path = directory / name
    with path.open("wb") as out:
        for block in dirty.tolist():
            out.write(bytes([fill_byte(generation, block)]) * device.block_size)
    header = DiffMetadata(dirty, empty, device.block_size).to_diff_header(parent, build_id)
    return header, path


def write_sample_chain(storage: Storage, build_ids: Sequence[uuid.UUID]) -> None:
    """Store one build per id, each a diff over the previous; the first over empty devices."""
    memfile = rootfs = None
    with tempfile.TemporaryDirectory(prefix="ember-sample-") as scratch:
        for generation, build_id in enumerate(build_ids, start=1):
            layer_dir = Path(scratch) / str(build_id)
            layer_dir.mkdir()
            memfile, memfile_data = _write_layer(
                layer_dir,
                "memfile",
                generation,
                SAMPLE_MEMFILE,
                memfile
                or empty_device_header(build_id, SAMPLE_MEMFILE.size_bytes, SAMPLE_MEMFILE.block_size),
                build_id,
            )
            rootfs, rootfs_data = _write_layer(
                layer_dir,
                "rootfs.ext4",
                generation,
                SAMPLE_ROOTFS,
                rootfs or SAMPLE_ROOTFS.empty(build_id),
                build_id,
            )
            snapfile = layer_dir / "snapfile"
            snapfile.write_bytes(f"ember sample snapfile of {build_id}: no VM state\n".encode())
            upload_build(
                storage,
                BuildArtifacts(
                    build_id=build_id,
                    metadata=TemplateMetadata(
                        version=2,
                        template=TemplateInfo(str(build_id), SAMPLE_KERNEL, SAMPLE_FIRECRACKER),
                    ),
                    rootfs_header=rootfs,
                    rootfs_data=rootfs_data,
                    memfile_header=memfile,
                    memfile_data=memfile_data,
                    snapfile=snapfile,
                ),
            )

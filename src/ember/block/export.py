"""Turning an overlay's written blocks into a diff build (facts file 2.8, 2.12, 3.5).

The diff data object holds the DIRTY blocks only, packed in ascending block order, which is
the storage offset ``DiffMetadata.to_diff_header`` assigns to each run::

    device   |  0  |  1  |  2  |  3  |  4  |  5  |  6  |
    state     DIRTY  --   ZERO  DIRTY DIRTY  --   DIRTY        -- = NOT_PRESENT

    diff     | blk 0 | blk 3 | blk 4 | blk 6 |                 packed, no gaps
    offset   0       4K      8K      12K     16K

    header   [0,4K) -> new @0   [4K,8K) -> parent   [8K,12K) -> nil
             [12K,20K) -> new @4K   [20K,24K) -> parent   [24K,28K) -> new @12K

The copy is one call into a native loop (``_pack.c``, which also gives the measurements
behind it): each short run, the scattered blocks a guest leaves, is spliced from the source
into a pipe that is written out a megabyte at a time (one copy, one syscall per run, no
GIL); long runs are copied with ``copy_file_range`` (a reflink on XFS, an in-kernel copy
elsewhere). The loop stops at anything unusual (an errno, a source that ends early, a
kernel without splice) and reports how much of the diff file is complete; ``_DiffWriter``
packs the rest through a staging buffer and raises the errors. Writes are held out for the
whole export, so the data and the block sets agree; that also keeps the pages the pipe
holds by reference (not by copy) unchanged until they are written out. No sync precedes the
copy: a completed ``pwrite`` is in the page cache, which both paths read, and the cache
file is discarded with the sandbox.
"""

from __future__ import annotations

import errno
import os
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from ember.block.overlay import Overlay
from ember.build.metadata import TemplateMetadata
from ember.build.upload import BuildArtifacts, upload_build
from ember.errors import BuildError, StorageError
from ember.header import Header
from ember.storage import ROOTFS, Storage

try:
    from ember.block import _pack
except ImportError as exc:  # the extension is compiled by `make setup`
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

_NO_KERNEL_COPY: Final = frozenset({errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})
"""copy_file_range errors meaning "not here" (EINVAL: file systems without support on older kernels)."""
KERNEL_COPY_MIN_BYTES: Final = 1 << 20
"""Dirty runs at least this long are copied with copy_file_range; shorter ones are piped or staged."""
STAGE_BYTES: Final = 8 << 20
"""Bytes of short runs collected before one write to the diff file."""


def _run_bounds(dirty: npt.NDArray[np.uint64]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """First blocks and block ends of the maximal runs of consecutive indices in sorted ``dirty``."""
    blocks = dirty.astype(np.uint64)
    if len(blocks) == 0:
        return blocks, blocks
    breaks = np.flatnonzero(np.diff(blocks) != 1) + 1
    starts = blocks[np.concatenate(([0], breaks))]
    ends = blocks[np.concatenate((breaks - 1, [len(blocks) - 1]))] + np.uint64(1)
    return starts, ends


def dirty_runs(dirty: npt.NDArray[np.uint64]) -> list[tuple[int, int]]:
    """Maximal runs ``[start, end)`` of consecutive block indices in sorted ``dirty``."""
    starts, ends = _run_bounds(dirty)
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


class _DiffWriter:
    """Appends runs of a source file (cache file, guest RAM) to the diff file at the next packed offset.

    The writer of whatever the native loop leaves: it retries the piece the loop stopped at
    and raises ember's errors for what fails. Runs of at least ``KERNEL_COPY_MIN_BYTES`` go
    through ``copy_file_range``; shorter runs are read one ``preadv`` each into a staging
    buffer that is written out in one ``pwrite`` when full (per 8 KiB run from the page
    cache a ``preadv`` took ~2 µs where a ``copy_file_range``, which sets up a splice each
    time, took ~6.5 µs). Where the kernel refuses to copy, long runs are staged too.
    """

    def __init__(
        self, source_fd: int, source_name: Path, target_fd: int, target_name: Path, target_offset: int
    ) -> None:
        self._source_name = source_name
        self._source_fd = source_fd
        self._target_fd = target_fd
        self._target_name = target_name
        self._target_offset = target_offset
        self._kernel_copy = True
        self._stage = memoryview(bytearray(STAGE_BYTES))
        self._staged = 0
        self._stage_target = 0

    def append_runs(self, runs: list[tuple[int, int]]) -> None:
        """Append every ``(source offset, length)`` run in order, then write out what is staged.

        One loop with the common case (a short run that fits the stage and is read whole)
        kept inline: at ten thousand runs, Python call overhead would otherwise dominate.
        """
        stage, preadv, source_fd = self._stage, os.preadv, self._source_fd
        for source_offset, length in runs:
            if length >= KERNEL_COPY_MIN_BYTES and self._kernel_copy:
                self.flush()
                self._copy_in_kernel(source_offset, length)
                continue
            staged = self._staged
            if staged + length <= len(stage):
                try:
                    count = preadv(source_fd, [stage[staged : staged + length]], source_offset)
                except OSError:
                    count = -1  # _stage_run below retries and reports the error
                if count == length:
                    if staged == 0:
                        self._stage_target = self._target_offset
                    self._staged = staged + length
                    self._target_offset += length
                    continue
            self._stage_run(source_offset, length)
        self.flush()

    def flush(self) -> None:
        """Write out the staged bytes."""
        if self._staged == 0:
            return
        staged, self._staged = self._stage[: self._staged], 0
        written = 0
        try:
            while written < len(staged):
                written += os.pwrite(self._target_fd, staged[written:], self._stage_target + written)
        except OSError as exc:
            raise self._failed(
                f"write {self._target_name} at byte {self._stage_target + written}", exc
            ) from exc

    def _stage_run(self, source_offset: int, length: int) -> None:
        done = 0
        while done < length:
            if self._staged == len(self._stage):
                self.flush()
            if self._staged == 0:
                self._stage_target = self._target_offset
            take = min(length - done, len(self._stage) - self._staged)
            self._read(self._stage[self._staged : self._staged + take], source_offset + done)
            self._staged += take
            self._target_offset += take
            done += take

    def _read(self, view: memoryview, source_offset: int) -> None:
        done = 0
        while done < len(view):
            try:
                count = os.preadv(self._source_fd, [view[done:]], source_offset + done)
            except OSError as exc:
                raise self._failed(f"read {self._source_name} at byte {source_offset + done}", exc) from exc
            if count == 0:
                raise self._truncated(source_offset + done)
            done += count

    def _copy_in_kernel(self, source_offset: int, length: int) -> None:
        done = 0
        while done < length:
            try:
                count = os.copy_file_range(
                    self._source_fd, self._target_fd, length - done, source_offset + done, self._target_offset
                )
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise self._failed(
                        f"copy {self._source_name} at byte {source_offset + done} into {self._target_name}",
                        exc,
                    ) from exc
                self._kernel_copy = False
                self._stage_run(source_offset + done, length - done)
                return
            if count == 0:
                raise self._truncated(source_offset + done)
            done += count
            self._target_offset += count

    def _failed(self, action: str, exc: OSError) -> StorageError:
        return StorageError(f"cannot {action}: {exc}; check free space and I/O errors on the export disk")

    def _truncated(self, source_offset: int) -> StorageError:
        return StorageError(
            f"{self._source_name} ended at byte {source_offset}, before the dirty blocks recorded for it: "
            "the file was truncated behind the exporter's back"
        )


def pack_blocks(
    source_fd: int, source_name: Path, dirty: npt.NDArray[np.uint64], block_size: int, out_path: Path
) -> None:
    """Write the ``dirty`` blocks of the source file to ``out_path``, packed in ascending block order."""
    if _IMPORT_ERROR is not None:
        raise StorageError(
            f"ember's native diff packer is not built ({_IMPORT_ERROR}): run `make setup` to compile it"
        )
    starts, ends = _run_bounds(dirty)
    offsets = starts * np.uint64(block_size)
    lengths = (ends - starts) * np.uint64(block_size)
    try:
        target_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot create diff file {out_path}: {exc}; check the directory") from exc
    try:
        written = _pack.pack(source_fd, target_fd, offsets, lengths, KERNEL_COPY_MIN_BYTES)
        if written < int(lengths.sum()):
            writer = _DiffWriter(source_fd, source_name, target_fd, out_path, written)
            writer.append_runs(_runs_after(offsets, lengths, written))
    finally:
        os.close(target_fd)


def _runs_after(
    offsets: npt.NDArray[np.uint64], lengths: npt.NDArray[np.uint64], written: int
) -> list[tuple[int, int]]:
    """The ``(source offset, length)`` runs still to pack once the first ``written`` bytes are."""
    first = int(np.searchsorted(np.cumsum(lengths), written, side="right"))
    runs = list(zip(offsets[first:].tolist(), lengths[first:].tolist(), strict=True))
    done = written - int(lengths[:first].sum())
    runs[0] = (runs[0][0] + done, runs[0][1] - done)
    return runs


def export_diff(overlay: Overlay, parent_header: Header, new_build_id: uuid.UUID, out_path: Path) -> Header:
    """Write the overlay's dirty blocks to ``out_path`` and return the diff header over ``parent_header``.

    The header is generation + 1 of the parent, still marked pending upload. Writes to the
    overlay wait until the export is done; reads continue.
    """
    if parent_header.metadata.size != overlay.size:
        raise BuildError(
            f"parent header describes a {parent_header.metadata.size}-byte device but the overlay has "
            f"{overlay.size} bytes: export against the header of the build the overlay was opened on"
        )
    block_size = overlay.block_size
    with overlay.paused_writes():
        diff = overlay.diff_metadata()
        pack_blocks(overlay.cache.fileno(), overlay.cache.path, diff.dirty, block_size, out_path)
    return diff.to_diff_header(parent_header, new_build_id)


def export_rootfs_build(
    overlay: Overlay,
    parent_header: Header,
    storage: Storage,
    new_build_id: uuid.UUID,
    metadata: TemplateMetadata,
    scratch_dir: Path | None = None,
) -> Header:
    """Store the overlay as a new filesystem-only build (rootfs diff, header, metadata.json last).

    ``parent_header`` is the stored rootfs header of the build the overlay's base reads (for a
    first layer, ``ember.header.empty_device_header``). ``metadata`` must name ``new_build_id``; it is stored
    with ``filesystem_only`` set. The diff file lives in a temporary directory under
    ``scratch_dir`` until uploaded. Returns the header as stored.
    """
    if metadata.template.build_id != str(new_build_id):
        raise BuildError(
            f"metadata names build {metadata.template.build_id!r} but the export creates {new_build_id}: "
            "set metadata.template.build_id to the new build id"
        )
    try:
        scratch = tempfile.TemporaryDirectory(prefix="ember-export-", dir=scratch_dir)
    except OSError as exc:
        raise StorageError(f"cannot create a scratch directory in {scratch_dir}: {exc}") from exc
    with scratch as directory:
        data_path = Path(directory) / ROOTFS
        header = export_diff(overlay, parent_header, new_build_id, data_path)
        artifacts = BuildArtifacts(
            build_id=new_build_id,
            metadata=replace(metadata, filesystem_only=True),
            rootfs_header=header,
            rootfs_data=data_path,
        )
        upload_build(storage, artifacts, consume_files=True)
    return replace(header, pending_upload=False)

"""Reads of a framed (compressed) data object in its uncompressed address space.

A compressed data object ``{build}/{file}.lz4|.zstd`` is a run of independently compressed
frames; the header's frame table says where each one lives (facts file 1.2, 2.3)::

    U space  |-- frame 0 (2 MiB) --|-- frame 1 (2 MiB) --|-- frame 2 ... --|
    C space  |- c0 -|-- c1 --|- c2 -| ...
             ^start_c[0]     ^start_c[2]

A U-range read fetches the C-range spanning its frames with one storage call and decodes
each frame whole. Decoded frames are kept in a small LRU so sequential small reads (NBD
issues 4 KiB..128 KiB requests) decode each 2 MiB frame once, not once per request.

Guarantees: a frame that fails to decode, decodes to the wrong size, or whose bytes are
missing from the object raises ``BuildError`` naming the object and the offsets; corrupt
data is never served as zeros or garbage. Nothing a frame table says can make a read
allocate more than its frames' own bytes: frames are at most ``MAX_FRAME_BYTES``
uncompressed, decoding is bounded by that size, and frames apart in the object are read
apart. A storage failure stays a ``StorageError`` (a retry may cure it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Final

import lz4.frame
import numpy as np
import zstandard

from ember.errors import BuildError, EmberError, ObjectNotFound, StorageError
from ember.header import CompressionType, FrameTable
from ember.storage import Storage

DECODED_FRAME_CACHE_COUNT: Final = 16
"""Decoded frames kept per reader: 16 x 2 MiB default frames = 32 MiB at most."""
MAX_FRAME_BYTES: Final = 64 << 20
"""The largest uncompressed frame decoded: 32 x the 2 MiB frames writers use (facts file 0). The
header's i32 frame sizes would allow 2 GiB, which a corrupt table must not make us allocate."""


def compressed_bound(size_u: int) -> int:
    """The most bytes LZ4 or zstd can turn ``size_u`` bytes into (both worst cases, rounded up)."""
    return size_u + size_u // 255 + 1024


def check_frame_sizes(size_u: int, size_c: int) -> None:
    """Refuse a frame before reading or decoding it when its sizes are beyond any writer's."""
    if size_u > MAX_FRAME_BYTES:
        raise ValueError(
            f"the frame table says it holds {size_u} uncompressed bytes, over the {MAX_FRAME_BYTES}-byte "
            "frame limit"
        )
    if size_c > compressed_bound(size_u):
        raise ValueError(
            f"the frame table says {size_u} bytes compressed to {size_c}, more than any codec produces"
        )


def decode_frame(compression_type: CompressionType, data: bytes | memoryview, size_u: int) -> bytes:
    """One frame's uncompressed bytes; raises ``ValueError`` when the codec rejects the input.

    The output is bounded by ``size_u`` whatever the frame claims: LZ4 decodes at most one
    byte more (to tell a longer frame), zstd's declared content size is checked first (it
    would size the output buffer otherwise).
    """
    if size_u > MAX_FRAME_BYTES:
        raise ValueError(f"a frame of {size_u} bytes is over the {MAX_FRAME_BYTES}-byte frame limit")
    try:
        if compression_type is CompressionType.LZ4:
            decompressor = lz4.frame.LZ4FrameDecompressor()
            decoded: bytes = decompressor.decompress(data, max_length=size_u + 1)
            if len(decoded) == size_u and not decompressor.eof:
                raise ValueError("the frame does not end where the frame table says")
        elif compression_type is CompressionType.ZSTD:
            declared = zstandard.frame_content_size(data)
            if declared > size_u:
                raise ValueError(f"the frame declares {declared} bytes, the frame table says {size_u}")
            # A fresh decompressor per frame: zstandard objects are not safe to share across threads.
            decoded = zstandard.ZstdDecompressor().decompress(data, max_output_size=size_u)
        else:
            raise ValueError(f"compression type {compression_type!r} has no frames")
    except (RuntimeError, zstandard.ZstdError) as exc:
        raise ValueError(str(exc)) from exc
    except MemoryError as exc:
        raise ValueError(f"out of memory decoding a {size_u}-byte frame") from exc
    if len(decoded) != size_u:
        raise ValueError(f"frame decoded to {len(decoded)} bytes or more, the frame table says {size_u}")
    return decoded


class FramedReader:
    """Serves uncompressed byte ranges of framed data objects; safe to share between threads."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._lock = threading.Lock()
        self._decoded: OrderedDict[tuple[str, int], bytes] = OrderedDict()

    def read(self, key: str, table: FrameTable, offset_u: int, length: int) -> list[bytes | memoryview]:
        """Pieces that together are ``length`` uncompressed bytes from ``offset_u`` of ``key``."""
        frames = table.columns
        starts_u = frames["start_u"]
        first = int(np.searchsorted(starts_u, offset_u, side="right")) - 1
        last = int(np.searchsorted(starts_u, offset_u + length, side="left"))
        if first < 0:
            raise self._uncovered(key, offset_u, length)
        rows = frames[first:last].tolist()
        expected_u = int(rows[0][0])
        for start_u, _start_c, size_u, _size_c in rows:
            if start_u != expected_u:
                break
            expected_u += size_u
        if expected_u < offset_u + length:
            raise self._uncovered(key, offset_u, length)

        decoded = self._decode_rows(key, table.compression_type, rows)
        pieces: list[bytes | memoryview] = []
        for (start_u, _start_c, size_u, _size_c), frame in zip(rows, decoded, strict=True):
            low = max(offset_u, start_u) - start_u
            high = min(offset_u + length, start_u + size_u) - start_u
            pieces.append(frame if low == 0 and high == size_u else memoryview(frame)[low:high])
        return pieces

    def _decode_rows(
        self, key: str, compression_type: CompressionType, rows: list[tuple[int, int, int, int]]
    ) -> list[bytes]:
        with self._lock:
            cached = [self._decoded.get((key, row[0])) for row in rows]
            for row, frame in zip(rows, cached, strict=True):
                if frame is not None:
                    self._decoded.move_to_end((key, row[0]))
        missing = [row for row, frame in zip(rows, cached, strict=True) if frame is None]
        if not missing:
            return [frame for frame in cached if frame is not None]

        fresh: dict[int, bytes] = {}
        for run in _contiguous_runs(missing):
            fresh.update(self._decode_run(key, compression_type, run))
        with self._lock:
            for start_u, frame in fresh.items():
                self._decoded[(key, start_u)] = frame
            while len(self._decoded) > DECODED_FRAME_CACHE_COUNT:
                self._decoded.popitem(last=False)
        return [
            frame if frame is not None else fresh[row[0]] for row, frame in zip(rows, cached, strict=True)
        ]

    def _decode_run(
        self, key: str, compression_type: CompressionType, run: list[tuple[int, int, int, int]]
    ) -> dict[int, bytes]:
        """Frames adjacent in the compressed object, fetched with one read and decoded one by one."""
        for start_u, frame_c, size_u, size_c in run:
            try:
                check_frame_sizes(size_u, size_c)
            except ValueError as exc:
                raise self._corrupt(key, frame_c, start_u, exc) from exc
        start_c = run[0][1]
        end_c = run[-1][1] + run[-1][3]
        try:
            raw = self._storage.read_range(key, start_c, end_c - start_c)
        except ObjectNotFound as exc:
            raise BuildError(
                f"compressed object {key!r} is missing from {self._storage.url}: copy or re-upload the build"
            ) from exc
        except StorageError as exc:  # kept a StorageError: the read may succeed when retried
            raise StorageError(
                f"cannot read compressed bytes [{start_c}, {end_c}) of {key!r} in {self._storage.url}: {exc}"
            ) from exc
        except EmberError as exc:
            raise BuildError(
                f"cannot read compressed bytes [{start_c}, {end_c}) of {key!r} in {self._storage.url}: "
                f"{exc}; check that the build's data object was uploaded completely"
            ) from exc
        view = memoryview(raw)
        decoded: dict[int, bytes] = {}
        for start_u, frame_c, size_u, size_c in run:
            low = frame_c - start_c
            if low + size_c > len(raw):
                raise BuildError(
                    f"compressed object {key!r} in {self._storage.url} ends at byte {start_c + len(raw)}, "
                    f"but the header needs a frame at [{frame_c}, {frame_c + size_c}): the object is "
                    "truncated or missing; re-upload the build"
                )
            try:
                decoded[start_u] = decode_frame(compression_type, view[low : low + size_c], size_u)
            except ValueError as exc:
                raise self._corrupt(key, frame_c, start_u, exc) from exc
        return decoded

    def _corrupt(self, key: str, frame_c: int, start_u: int, exc: ValueError) -> BuildError:
        return BuildError(
            f"frame at compressed offset {frame_c} (uncompressed {start_u}) of {key!r} in "
            f"{self._storage.url} is corrupt: {exc}; re-upload the build"
        )

    def _uncovered(self, key: str, offset_u: int, length: int) -> BuildError:
        return BuildError(
            f"uncompressed range [{offset_u}, {offset_u + length}) of {key!r} is not covered by the "
            "header's frame table: the header is inconsistent with its mappings; rebuild or re-upload it"
        )


def _contiguous_runs(rows: list[tuple[int, int, int, int]]) -> list[list[tuple[int, int, int, int]]]:
    """``rows`` split where the next frame does not start where the previous one ends in C space.

    Sparse trimming leaves gaps between frames; one read across a gap would fetch bytes no
    frame needs, as many as a corrupt table's offsets say.
    """
    runs: list[list[tuple[int, int, int, int]]] = []
    for row in rows:
        if runs and runs[-1][-1][1] + runs[-1][-1][3] == row[1]:
            runs[-1].append(row)
        else:
            runs.append([row])
    return runs

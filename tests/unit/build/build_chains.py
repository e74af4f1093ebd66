"""Hand-made build chains for the build tests (a helper module, not a test file).

A chain is described layer by layer as ``{block index: content}`` where content is a seed
for that block's bytes, or None for a block the layer zeroed. The expected flat image and
each layer's header are computed here block by block, independently of ember's mapping
algebra, so the tests compare ember against a second implementation.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field

import lz4.frame
import zstandard

from ember.header import (
    NIL_UUID,
    BuildData,
    CompressionType,
    FrameTable,
    Header,
    Mapping,
    MappingTable,
    Metadata,
    serialize_header,
)
from ember.storage import Storage

Layer = dict[int, int | None]


def block_bytes(seed: int, generation: int, block: int, block_size: int) -> bytes:
    return random.Random(f"{seed}-{generation}-{block}").randbytes(block_size)


@dataclass
class Chain:
    """A build chain of one device: headers and packed data per generation, oldest first."""

    file_name: str
    block_size: int
    size: int
    builds: list[uuid.UUID]
    mappings: list[list[Mapping]]
    data: list[bytes]
    image: bytes
    stored_keys: set[str] = field(default_factory=set)

    @property
    def top(self) -> uuid.UUID:
        return self.builds[-1]

    def header(self, generation: int, version: int, compression: dict[int, CompressionType]) -> Header:
        metadata = Metadata(
            version=version,
            block_size=self.block_size,
            size=self.size,
            generation=generation,
            build_id=self.builds[generation],
            base_build_id=self.builds[0],
        )
        builds = None
        if version >= 4:
            referenced = {m.build_id for m in self.mappings[generation] if m.build_id != NIL_UUID}
            builds = {
                build: self._build_data(self.builds.index(build), compression)
                for build in referenced | {self.builds[generation]}
            }
        return Header(metadata, MappingTable.from_records(self.mappings[generation]), builds)

    def _build_data(self, generation: int, compression: dict[int, CompressionType]) -> BuildData:
        codec = compression.get(generation, CompressionType.NONE)
        if codec is CompressionType.NONE:
            return BuildData(size_bytes=len(self.data[generation]))
        sizes = [(len(u), len(c)) for u, c in self.frames(generation, codec)]
        return BuildData(
            size_bytes=len(self.data[generation]), frame_table=FrameTable.from_sizes(codec, sizes)
        )

    def frames(self, generation: int, codec: CompressionType) -> list[tuple[bytes, bytes]]:
        """(uncompressed, compressed) frames of 4 blocks each."""
        data = self.data[generation]
        step = 4 * self.block_size
        result = []
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            if codec is CompressionType.LZ4:
                packed = lz4.frame.compress(piece, block_checksum=True)
            else:
                packed = zstandard.ZstdCompressor(write_checksum=True).compress(piece)
            result.append((piece, packed))
        return result

    def store(
        self,
        storage: Storage,
        *,
        version: int = 3,
        compression: dict[int, CompressionType] | None = None,
        generations: range | None = None,
    ) -> None:
        """Put headers and data objects of the chain (all generations unless told)."""
        codecs = compression or {}
        suffix = {CompressionType.LZ4: ".lz4", CompressionType.ZSTD: ".zstd"}
        for generation in generations or range(len(self.builds)):
            build = self.builds[generation]
            header_key = f"{build}/{self.file_name}.header"
            storage.put(header_key, serialize_header(self.header(generation, version, codecs)))
            codec = codecs.get(generation, CompressionType.NONE)
            if codec is CompressionType.NONE:
                data_key, data = f"{build}/{self.file_name}", self.data[generation]
            else:
                data_key = f"{build}/{self.file_name}{suffix[codec]}"
                data = b"".join(packed for _, packed in self.frames(generation, codec))
            storage.put(data_key, data)
            self.stored_keys |= {header_key, data_key}


def make_chain(
    layers: list[Layer], *, block_size: int, size: int, file_name: str = "rootfs.ext4", seed: int = 1
) -> Chain:
    """The chain whose generation ``g`` writes ``layers[g]`` on top of generations ``< g``."""
    blocks = -(-size // block_size)
    builds = [uuid.UUID(int=random.Random(f"{seed}-{g}").getrandbits(128)) for g in range(len(layers))]
    owner: list[tuple[int, int] | None] = [None] * blocks
    image = bytearray(blocks * block_size)
    mappings: list[list[Mapping]] = []
    data: list[bytes] = []
    for generation, layer in enumerate(layers):
        packed = bytearray()
        for block in sorted(layer):
            content = layer[block]
            at = block * block_size
            if content is None:
                owner[block] = None
                image[at : at + block_size] = bytes(block_size)
                continue
            owner[block] = (generation, len(packed) // block_size)
            payload = block_bytes(seed + content, generation, block, block_size)
            image[at : at + block_size] = payload
            packed += payload
        data.append(bytes(packed))
        mappings.append(_runs(owner, builds, block_size))
    return Chain(file_name, block_size, size, builds, mappings, data, bytes(image[:size]))


def _continues(previous: tuple[int, int] | None, current: tuple[int, int] | None) -> bool:
    if previous is None or current is None:
        return previous is None and current is None
    return current[0] == previous[0] and current[1] == previous[1] + 1


def _runs(owner: list[tuple[int, int] | None], builds: list[uuid.UUID], block_size: int) -> list[Mapping]:
    runs: list[Mapping] = []
    start = 0
    for block in range(1, len(owner) + 1):
        if block < len(owner) and _continues(owner[block - 1], owner[block]):
            continue
        first = owner[start]
        build = NIL_UUID if first is None else builds[first[0]]
        storage_offset = 0 if first is None else first[1] * block_size
        runs.append(Mapping(start * block_size, (block - start) * block_size, build, storage_offset))
        start = block
    return runs


FRAGMENTED_LAYERS: list[Layer] = [
    {**{b: 1 for b in range(40)}},
    {3: 2, 4: 2, 5: 2, 10: 2, 20: None, 21: None, 33: 2, 41: 2, 42: 2},
    {4: 3, 11: 3, 12: 3, 21: 3, 30: None, 39: 3, 47: 3},
]
"""48 blocks: base data in 0-39 (40-47 never written), two diff layers with writes and zeroed blocks."""

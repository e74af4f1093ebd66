import uuid

from ember.build import BuildFile
from ember.build.sample import SAMPLE_MEMFILE, SAMPLE_ROOTFS, fill_byte, layer_blocks, write_sample_chain
from ember.storage import MEMFILE, ROOTFS, MemoryStorage


def test_every_block_of_the_top_layer_reads_as_the_layer_that_last_wrote_it() -> None:
    storage = MemoryStorage("sample-chain-test")
    builds = [uuid.uuid4() for _ in range(3)]
    write_sample_chain(storage, builds)
    for name, device in ((MEMFILE, SAMPLE_MEMFILE), (ROOTFS, SAMPLE_ROOTFS)):
        blocks = device.size_bytes // device.block_size
        expected = [0] * blocks
        for generation in (1, 2, 3):
            dirty, empty = layer_blocks(generation, blocks)
            for block in dirty.tolist():
                expected[block] = fill_byte(generation, block)
            for block in empty.tolist():
                expected[block] = 0
        top = BuildFile.open(storage, builds[-1], name)
        assert top.header.metadata.generation == 3
        for block in range(0, blocks, max(1, blocks // 512)):
            data = top.read_at(block * device.block_size, device.block_size)
            assert data == bytes([expected[block]]) * device.block_size, (name, block)

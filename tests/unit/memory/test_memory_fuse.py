"""The FUSE memory file: a build's memfile served lazily, the guest's writes kept as the dirty set.

Every mapping of the memory file is made in a child process, as QEMU maps it: a thread of
the process serving FUSE that faulted on it while holding the GIL would deadlock.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from ember.block import BlockState
from ember.build import BuildFile
from ember.errors import UsageError
from ember.header import HUGEPAGE_SIZE, NIL_UUID, PAGE_SIZE, DiffMetadata, Header, serialize_header
from ember.memory import LazyMemory, LazyMemoryError, export_memory, export_memory_diff, is_mounted
from ember.storage import MEMFILE, BuildPaths, MemoryStorage

pytestmark = pytest.mark.root

SIZE = 4 << 20
PAGES = SIZE // PAGE_SIZE

CHILD = r"""
import json, mmap, os, sys
path, plan = sys.argv[1], json.loads(sys.argv[2])
fd = os.open(path, os.O_RDWR)
m = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
if plan.get("random"):
    m.madvise(mmap.MADV_RANDOM)
seen = {str(offset): m[offset : offset + plan["read_bytes"]].hex() for offset in plan.get("reads", [])}
if plan.get("copy_to"):
    with open(plan["copy_to"], "wb") as out:
        out.write(m[:])
for offset, byte, length in plan.get("writes", []):
    m[offset : offset + length] = bytes([byte]) * length
m.close()
os.close(fd)
print(json.dumps(seen))
"""


HOLD = "import sys; f = open(sys.argv[1], 'rb'); print('open', flush=True); sys.stdin.read()"


def in_child(path: Path, **plan: object) -> dict[str, str]:
    """Map ``path`` MAP_SHARED in a new process, run ``plan``, unmap and exit; the pages it read."""
    plan.setdefault("read_bytes", 16)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), json.dumps(plan)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, str] = json.loads(done.stdout)
    return result


@pytest.fixture(autouse=True)
def _need_fuse() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount FUSE file systems")
    if shutil.which("fusermount3") is None or not Path("/dev/fuse").exists():
        pytest.skip("needs /dev/fuse and fusermount3 (Debian package fuse3)")


class CountingStorage(MemoryStorage):
    """A memory store that records every ranged read of a data object."""

    def __init__(self) -> None:
        super().__init__("lazy-memory-test")
        self.reads: list[tuple[str, int, int]] = []

    def read_range_into(self, key: str, offset: int, buffer: bytearray | memoryview) -> int:
        self.reads.append((key, offset, len(memoryview(buffer))))
        return super().read_range_into(key, offset, buffer)


@dataclass(frozen=True)
class Chain:
    """Two memfile layers in ``storage``: the parent's RAM image, then the child's."""

    storage: CountingStorage
    parent: uuid.UUID
    top: uuid.UUID
    image: bytes
    """The top build's memfile as a flat image."""

    def open(self) -> BuildFile:
        return BuildFile.open(self.storage, self.top, MEMFILE)


def _store(storage: MemoryStorage, header: Header, data: Path) -> None:
    paths = BuildPaths(header.metadata.build_id)
    storage.put(paths.header(MEMFILE), serialize_header(header))
    storage.put(paths.data_object(MEMFILE), data.read_bytes())


def _chain(tmp_path: Path, block_size: int) -> Chain:
    rng = np.random.default_rng(11)
    ram = rng.integers(1, 256, SIZE, dtype=np.uint8)
    ram[: SIZE // 4] = 0  # a quarter of the guest never touched: nil in the header
    (tmp_path / "ram").write_bytes(ram.tobytes())
    storage = CountingStorage()
    parent = uuid.uuid4()
    parent_header = export_memory(tmp_path / "ram", SIZE, block_size, parent, tmp_path / "parent.data")
    _store(storage, parent_header, tmp_path / "parent.data")
    # The child layer rewrites the second half of the image with other non-zero bytes.
    changed = ram.copy()
    changed[SIZE // 2 :] = rng.integers(1, 256, SIZE // 2, dtype=np.uint8)
    (tmp_path / "child.data").write_bytes(changed[SIZE // 2 :].tobytes())
    top = uuid.uuid4()
    first, end = SIZE // 2 // block_size, SIZE // block_size
    dirty = np.arange(first, end, dtype=np.uint64)
    top_header = DiffMetadata(dirty, np.empty(0, np.uint64), block_size).to_diff_header(parent_header, top)
    _store(storage, top_header, tmp_path / "child.data")
    return Chain(storage, parent, top, changed.tobytes())


@pytest.fixture
def chain(tmp_path: Path) -> Chain:
    return _chain(tmp_path, PAGE_SIZE)


@pytest.fixture
def lazy(tmp_path: Path, chain: Chain) -> Iterator[LazyMemory]:
    work = tmp_path / "work"
    work.mkdir()
    with LazyMemory(chain.open(), work) as memory:
        yield memory
    assert not is_mounted(memory.mount_dir)


def test_the_memory_file_reads_as_the_layered_memfile_through_a_shared_mapping(
    tmp_path: Path, chain: Chain, lazy: LazyMemory
) -> None:
    assert lazy.path.stat().st_size == SIZE
    in_child(lazy.path, copy_to=str(tmp_path / "seen"))
    assert (tmp_path / "seen").read_bytes() == chain.image
    assert lazy.stats().base_read_bytes == SIZE
    assert lazy.overlay.diff_metadata().dirty.size == 0


def test_only_the_pages_a_guest_touches_are_read_from_storage(chain: Chain, lazy: LazyMemory) -> None:
    touched = [5 * PAGE_SIZE, (PAGES // 2 + 7) * PAGE_SIZE, SIZE - PAGE_SIZE]
    seen = in_child(lazy.path, reads=touched, random=True)
    for offset in touched:
        assert bytes.fromhex(seen[str(offset)]) == chain.image[offset : offset + 16]
    data_reads = [(offset, length) for key, offset, length in chain.storage.reads if "memfile" in key]
    # Page 5 lies in the nil quarter: zeros without a storage read. The other two pages are
    # read from the parent's and the child's data objects, one page each.
    assert len(data_reads) == 2
    assert all(length == PAGE_SIZE for _, length in data_reads)
    assert lazy.stats().base_reads == 3
    assert lazy.stats().base_read_bytes == 3 * PAGE_SIZE


def test_guest_writes_become_dirty_pages_and_zeroed_pages_become_empty(
    chain: Chain, lazy: LazyMemory
) -> None:
    in_child(lazy.path, writes=[(10 * PAGE_SIZE, 0xAB, 100), (PAGES // 2 * PAGE_SIZE, 0, PAGE_SIZE)])
    assert lazy.overlay.tracker.state_of(10) is BlockState.DIRTY
    assert lazy.overlay.tracker.state_of(PAGES // 2) is BlockState.ZERO
    assert lazy.overlay.tracker.state_of(11) is BlockState.NOT_PRESENT
    dirty, empty = lazy.overlay.tracker.export()
    assert dirty.tolist() == [10]
    assert empty.tolist() == [PAGES // 2]
    assert lazy.stats().written_bytes >= 2 * PAGE_SIZE
    fd = os.open(lazy.path, os.O_RDONLY)  # a syscall, not a fault: safe from the serving process
    try:
        assert os.pread(fd, 4, 10 * PAGE_SIZE) == b"\xab" * 4
    finally:
        os.close(fd)


def test_an_exported_diff_layers_over_the_parent_and_reads_as_the_written_image(
    tmp_path: Path, chain: Chain, lazy: LazyMemory
) -> None:
    writes = [
        (3 * PAGE_SIZE, 0x11, PAGE_SIZE),
        (PAGES // 2 * PAGE_SIZE + 50, 0x22, 3 * PAGE_SIZE),
        ((PAGES - 1) * PAGE_SIZE, 0, PAGE_SIZE),
    ]
    in_child(lazy.path, writes=writes)
    expected = bytearray(chain.image)
    for offset, byte, length in writes:
        expected[offset : offset + length] = bytes([byte]) * length

    parent_header = chain.open().header
    new = uuid.uuid4()
    header = export_memory_diff(lazy, parent_header, new, tmp_path / "diff")
    assert header.metadata.generation == parent_header.metadata.generation + 1
    assert header.metadata.build_id == new
    assert header.resolve((PAGES - 1) * PAGE_SIZE).build_id == NIL_UUID
    assert header.resolve(4 * PAGE_SIZE).build_id == NIL_UUID  # untouched: still the parent's nil
    assert header.resolve(PAGES // 2 * PAGE_SIZE).build_id == new
    assert (tmp_path / "diff").stat().st_size == 5 * PAGE_SIZE  # page 3, pages half..half+3
    _store(chain.storage, header, tmp_path / "diff")
    assert BuildFile.open(chain.storage, new, MEMFILE).read_at(0, SIZE) == bytes(expected)


WRITE_AND_HOLD = r"""
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
m[int(sys.argv[2]) : int(sys.argv[2]) + 8] = b"paused!!"
print("written", flush=True)
sys.stdin.read()
"""


def test_export_while_the_guest_still_maps_the_file_includes_its_latest_writes(
    tmp_path: Path, chain: Chain, lazy: LazyMemory
) -> None:
    offset = 7 * PAGE_SIZE
    guest = subprocess.Popen(
        [sys.executable, "-c", WRITE_AND_HOLD, str(lazy.path), str(offset)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert guest.stdout is not None
        assert guest.stdout.readline() == "written\n"
        header = export_memory_diff(lazy, chain.open().header, uuid.uuid4(), tmp_path / "diff")
    finally:
        guest.communicate(timeout=30)
    assert header.resolve(offset).build_id == header.metadata.build_id
    assert (tmp_path / "diff").read_bytes()[:8] == b"paused!!"


def test_hugepage_tracking_dirties_whole_2_mib_pages(tmp_path: Path) -> None:
    chain = _chain(tmp_path, HUGEPAGE_SIZE)
    with LazyMemory(chain.open(), tmp_path, HUGEPAGE_SIZE) as lazy:
        in_child(lazy.path, writes=[(HUGEPAGE_SIZE + 8, 0x5A, 8), (0, 0, HUGEPAGE_SIZE)])
        dirty, empty = lazy.overlay.tracker.export()
        assert dirty.tolist() == [1]
        assert empty.tolist() == [0]
        header = export_memory_diff(lazy, chain.open().header, uuid.uuid4(), tmp_path / "diff")
    assert (tmp_path / "diff").stat().st_size == HUGEPAGE_SIZE
    assert header.metadata.block_size == HUGEPAGE_SIZE


def test_export_refuses_a_parent_with_another_block_size(
    tmp_path: Path, chain: Chain, lazy: LazyMemory
) -> None:
    parent = chain.open().header
    huge_parent = replace(parent, metadata=replace(parent.metadata, block_size=HUGEPAGE_SIZE))
    with pytest.raises(UsageError, match="page_size"):
        export_memory_diff(lazy, huge_parent, uuid.uuid4(), tmp_path / "diff")


def test_the_memory_file_keeps_its_size(lazy: LazyMemory) -> None:
    os.truncate(lazy.path, SIZE)
    with pytest.raises(OSError) as refused:
        os.truncate(lazy.path, SIZE // 2)
    assert refused.value.errno == errno.EPERM
    assert lazy.path.stat().st_size == SIZE
    assert sorted(os.listdir(lazy.mount_dir)) == ["memfile"]


def test_close_unmounts_and_removes_the_mount_point_and_the_cache(tmp_path: Path, chain: Chain) -> None:
    lazy = LazyMemory(chain.open(), tmp_path)
    assert is_mounted(lazy.mount_dir)
    cache = lazy.overlay.cache.path
    lazy.close()
    assert not is_mounted(lazy.mount_dir)
    assert not lazy.mount_dir.exists()
    assert not cache.exists()
    lazy.close()  # a second close does nothing


def test_leaving_the_block_by_an_error_still_unmounts(tmp_path: Path, chain: Chain) -> None:
    with pytest.raises(RuntimeError, match="boom"), LazyMemory(chain.open(), tmp_path) as lazy:
        raise RuntimeError("boom")
    assert not is_mounted(lazy.mount_dir)
    assert not lazy.mount_dir.exists()


def test_closing_a_file_still_in_use_detaches_it_and_aborts_the_connection(
    tmp_path: Path, chain: Chain
) -> None:
    lazy = LazyMemory(chain.open(), tmp_path)
    cache = lazy.overlay.cache.path
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lazy.path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "open\n"
        with pytest.raises(LazyMemoryError, match=r"still in use.*connection was aborted"):
            lazy.close(timeout_s=0.5)
        assert not is_mounted(lazy.mount_dir)
        assert not lazy.mount_dir.exists()
        assert not cache.exists()
    finally:
        holder.kill()
        holder.communicate()

"""``BuildCache`` and ``sweep_downloads`` with a fake clock, a fake store and a temp template cache."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from ember.build import TemplateInfo, TemplateMetadata
from ember.environment import Environment
from ember.errors import StorageError
from ember.header import PAGE_SIZE, empty_device_header, serialize_header
from ember.sandbox import BuildInfo, BuildNotFound, VmmKind
from ember.sandbox.buildcache import BuildCache, sweep_downloads
from ember.sandbox.node import Node
from ember.sandbox.resume import TEMPLATE_CACHE, open_read_storage
from ember.storage import MEMFILE, ROOTFS, BuildPaths, ChunkCache
from ember.storage.memory import MemoryStorage
from ember.storage.temporaries import temporary_prefix, writer_tag

TTL = 100.0
A, B, C = (uuid.UUID(int=n, version=4) for n in (1, 2, 3))


class FakeStore:
    """The builds a store holds; ``load`` downloads a build's snapfile as a remote node's does."""

    def __init__(self, downloads: Path | None, local_root: Path) -> None:
        self.downloads = downloads
        self.local_root = local_root
        self.builds = {A, B, C}
        self.loads: list[uuid.UUID] = []
        self.unreachable = False
        self.in_use: set[uuid.UUID] = set()
        self.now = 0.0

    def load(self, build_id: uuid.UUID) -> BuildInfo:
        if build_id not in self.builds:
            raise BuildNotFound(f"build {build_id} has no metadata.json")
        self.loads.append(build_id)
        root = self.downloads if self.downloads is not None else self.local_root
        snapfile = root / str(build_id) / "snapfile"
        snapfile.parent.mkdir(parents=True, exist_ok=True)
        snapfile.write_bytes(b"device state")
        metadata = TemplateMetadata(
            version=2, template=TemplateInfo(str(build_id), "vmlinux-test", "qemu-7.2")
        )
        return BuildInfo(build_id, metadata, VmmKind.QEMU, snapfile, None, 1 << 20, 1, 1 << 20)

    def exists(self, build_id: uuid.UUID) -> bool:
        if self.unreachable:
            raise StorageError("the bucket did not answer")
        return build_id in self.builds

    def cache(self, **limits: float) -> BuildCache:
        return BuildCache(
            self.load,
            self.exists,
            lambda: set(self.in_use),
            self.downloads,
            ttl_s=limits.get("ttl_s", TTL),
            max_builds=int(limits.get("max_builds", 16)),
            recheck_s=limits.get("recheck_s", 10.0),
            clock=lambda: self.now,
        )


@pytest.fixture
def store(tmp_path: Path) -> FakeStore:
    return FakeStore(tmp_path / "template", tmp_path / "store")


def _download(store: FakeStore, build_id: uuid.UUID) -> Path:
    assert store.downloads is not None
    return store.downloads / str(build_id)


def test_an_entry_unused_for_the_ttl_goes_with_its_download(store: FakeStore) -> None:
    cache = store.cache()
    cache.get(A)
    store.now = TTL - 1
    assert cache.sweep() == []
    assert A in cache and (_download(store, A) / "snapfile").is_file()
    store.now = TTL + 1
    assert cache.sweep() == [A]
    assert A not in cache and not _download(store, A).exists()


def test_the_ttl_counts_from_the_last_use(store: FakeStore) -> None:
    cache = store.cache(recheck_s=1000.0)
    cache.get(A)
    store.now = TTL - 1
    cache.get(A)
    store.now = 2 * TTL - 2
    assert cache.sweep() == []
    assert store.loads == [A]


def test_beyond_max_builds_the_least_recently_used_goes(store: FakeStore) -> None:
    cache = store.cache(max_builds=2)
    cache.get(A)
    store.now = 1
    cache.get(B)
    store.now = 2
    cache.get(A)
    store.now = 3
    cache.get(C)
    assert len(cache) == 2 and A in cache and C in cache and B not in cache
    assert not _download(store, B).exists() and _download(store, A).exists()


def test_a_build_a_running_sandbox_uses_stays_and_its_ttl_counts_from_when_it_ended(store: FakeStore) -> None:
    cache = store.cache(max_builds=1)
    cache.get(A)
    store.in_use = {A}
    store.now = 3 * TTL
    cache.get(B)  # over the count, and A is long past its TTL: still kept
    assert A in cache and B in cache and _download(store, A).exists()
    store.in_use = set()
    cache.touch(A)  # its last sandbox ended now
    cache.forget(B)
    store.now += TTL - 1
    assert cache.sweep() == []
    store.now += 2
    assert cache.sweep() == [A]
    assert not _download(store, A).exists()


def test_a_local_stores_snapfile_is_never_deleted(tmp_path: Path) -> None:
    store = FakeStore(None, tmp_path / "store")
    cache = store.cache(max_builds=1)
    first = cache.get(A)
    cache.get(B)
    store.now = TTL + 1
    assert cache.sweep() == [B]
    assert A not in cache
    assert first.snapfile.is_file() and (tmp_path / "store" / str(B) / "snapfile").is_file()


def test_a_build_deleted_from_storage_is_not_found_once_rechecked(store: FakeStore) -> None:
    cache = store.cache(recheck_s=10.0)
    cache.get(A)
    store.builds.discard(A)
    store.now = 5
    cache.get(A)  # within the recheck interval the cache answers
    store.now = 11
    with pytest.raises(BuildNotFound):
        cache.get(A)
    assert A not in cache and not _download(store, A).exists()


def test_a_build_still_in_storage_stays_cached_after_the_recheck(store: FakeStore) -> None:
    cache = store.cache(recheck_s=10.0)
    cache.get(A)
    store.now = 11
    cache.get(A)
    store.unreachable = True
    store.now = 30
    cache.get(A)  # an unreachable store does not fail what the cache can serve
    assert store.loads == [A]


def test_a_download_removed_behind_the_caches_back_is_fetched_again(store: FakeStore) -> None:
    cache = store.cache()
    cache.get(A)
    (_download(store, A) / "snapfile").unlink()
    assert cache.get(A).snapfile.is_file()
    assert store.loads == [A, A]


def test_a_forgotten_build_is_loaded_again_and_keeps_its_download(store: FakeStore) -> None:
    cache = store.cache()
    cache.get(A)
    cache.forget(A)
    assert A not in cache and _download(store, A).exists()
    cache.get(A)
    assert store.loads == [A, A]


def test_concurrent_first_uses_of_a_build_load_it_once(store: FakeStore) -> None:
    release = threading.Event()
    plain_load = store.load

    def slow_load(build_id: uuid.UUID) -> BuildInfo:
        release.wait(5)
        return plain_load(build_id)

    store.load = slow_load  # type: ignore[method-assign]
    cache = store.cache()
    threads = [threading.Thread(target=cache.get, args=(A,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    release.set()
    for thread in threads:
        thread.join(5)
    assert store.loads == [A]


def _snapfile(folder: Path, age_s: float) -> None:
    folder.mkdir(parents=True)
    snapfile = folder / "snapfile"
    snapfile.write_bytes(b"device state")
    stamp = time.time() - age_s
    os.utime(snapfile, (stamp, stamp))


def test_the_startup_sweep_removes_old_and_half_written_downloads(tmp_path: Path) -> None:
    old, fresh, half, downloading, other = (
        tmp_path / name for name in (str(A), str(B), str(C), str(uuid.uuid4()), "notes")
    )
    _snapfile(old, TTL + 10)
    _snapfile(fresh, TTL - 10)
    _snapfile(other, TTL + 10)
    half.mkdir()
    boot = writer_tag().split("-")[0]
    (half / f".snapfile.{boot}-{os.getpid()}-1.x9ab.tmp").write_bytes(b"dev")  # its writer is gone
    downloading.mkdir()
    (downloading / f"{temporary_prefix('snapfile')}x9ab.tmp").write_bytes(b"dev")  # this process writes it

    removed = sweep_downloads(tmp_path, TTL)

    assert sorted(removed) == sorted([old, half])
    assert not old.exists() and not half.exists()
    assert (fresh / "snapfile").is_file() and (other / "snapfile").is_file() and list(downloading.iterdir())


def test_an_empty_folder_goes_only_once_it_is_older_than_the_ttl(tmp_path: Path) -> None:
    just_made, abandoned = tmp_path / str(A), tmp_path / str(B)
    just_made.mkdir()  # a download in another process about to create its temporary
    abandoned.mkdir()
    stamp = time.time() - TTL - 10
    os.utime(abandoned, (stamp, stamp))
    assert sweep_downloads(tmp_path, TTL) == [abandoned]
    assert just_made.is_dir()


def test_while_running_downloads_the_cache_does_not_hold_go_after_the_ttl(store: FakeStore) -> None:
    cache = store.cache()
    cache.get(A)
    store.in_use = {B}
    for build_id in (A, B, C):  # C: a checkpoint's, downloaded by its sandbox process
        folder = _download(store, build_id)
        if not folder.exists():
            _snapfile(folder, 0)
        stamp = time.time() - TTL - 10
        os.utime(folder / "snapfile", (stamp, stamp))
    assert cache.sweep_leftovers() == [_download(store, C)]
    assert _download(store, A).exists() and _download(store, B).exists()


def test_the_startup_sweep_of_a_missing_folder_removes_nothing(tmp_path: Path) -> None:
    assert sweep_downloads(tmp_path / "absent", TTL) == []


def _remote_node(tmp_path: Path, name: str) -> tuple[Node, MemoryStorage]:
    """A node's storage half over ``memory://name`` (a remote store: behind a chunk cache)."""
    env = Environment.resolve(
        f"memory://{name}",
        {
            "ORCHESTRATOR_BASE_PATH": str(tmp_path / "orchestrator"),
            "SNAPSHOT_CACHE_DIR": str(tmp_path / "chunks"),
        },
    )
    node = Node.__new__(Node)  # no slots, no sandbox processes: only what build_info needs
    node.env = env
    node.storage = open_read_storage(f"memory://{name}", env)
    node._sandboxes, node._sandboxes_lock = {}, threading.Lock()
    node._builds = BuildCache(
        node._load_build, node._build_exists, node._builds_in_use, env.orchestrator_base_path / TEMPLATE_CACHE
    )
    assert isinstance(node.storage, ChunkCache) and isinstance(node.storage.inner, MemoryStorage)
    return node, node.storage.inner


def _store_build(store: MemoryStorage, build_id: uuid.UUID) -> None:
    paths = BuildPaths(build_id)
    for name in (MEMFILE, ROOTFS):
        store.put(paths.header(name), serialize_header(empty_device_header(build_id, 1 << 20, PAGE_SIZE)))
    store.put(paths.snapfile, b"device state")
    metadata = TemplateMetadata(
        version=2, template=TemplateInfo(str(build_id), "vmlinux-test", "v1.14.1_431f1fc")
    )
    store.put(paths.metadata, metadata.to_json())


def test_a_remote_build_is_downloaded_once_and_not_found_once_deleted(tmp_path: Path) -> None:
    node, store = _remote_node(tmp_path, f"buildcache-{uuid.uuid4()}")
    _store_build(store, A)
    info = node.build_info(A)
    assert info.snapfile == node.env.orchestrator_base_path / TEMPLATE_CACHE / str(A) / "snapfile"
    assert info.snapfile.read_bytes() == b"device state" and info.memory_bytes == 1 << 20
    store.delete_prefix(f"{A}/")  # ember gc, from another host: the chunk cache still has it all
    node.forget_build(A)
    with pytest.raises(BuildNotFound, match=r"was deleted"):
        node.build_info(A)
    assert not info.snapfile.parent.exists()

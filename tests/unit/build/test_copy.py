from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from build_chains import FRAGMENTED_LAYERS, Chain, make_chain

from ember.build.copy import CopyEvent, CopyStarted, FileFinished, FileStarted, copy_build
from ember.errors import BuildError, UsageError
from ember.header import CompressionType
from ember.storage import LocalStorage, MemoryStorage, Storage

# Generation 1 writes memory blocks that generation 2 overwrites entirely: the top build's memfile
# header no longer references generation 1, so its memfile must not be copied.
MEMFILE_LAYERS: list[dict[int, int | None]] = [
    {b: 1 for b in range(16)},
    {2: 2, 3: 2},
    {2: 3, 3: 3, 9: 3, 15: None},
]


def metadata_json(build: uuid.UUID, *, filesystem_only: bool = False) -> bytes:
    document: dict[str, object] = {
        "version": 2,
        "template": {
            "build_id": str(build),
            "kernel_version": "vmlinux-6.1.158",
            "firecracker_version": "v1.14.1_431f1fc",
        },
    }
    if filesystem_only:
        document["filesystem_only"] = True
    return json.dumps(document).encode()


def store_builds(
    storage: Storage, *, compression: dict[int, CompressionType] | None = None
) -> tuple[Chain, Chain]:
    """Memfile and rootfs chains of three builds, each build complete with snapfile and metadata."""
    rootfs = make_chain(FRAGMENTED_LAYERS, block_size=4096, size=48 * 4096)
    memfile = make_chain(MEMFILE_LAYERS, block_size=4096, size=16 * 4096, file_name="memfile")
    assert rootfs.builds == memfile.builds
    version = 4 if compression else 3
    rootfs.store(storage, version=version, compression=compression)
    memfile.store(storage, version=version, compression=compression)
    for build in rootfs.builds:
        storage.put(f"{build}/snapfile", b"vm state of " + build.bytes)
        storage.put(f"{build}/metadata.json", metadata_json(build))
    unrelated = uuid.uuid4()
    storage.put(f"{unrelated}/metadata.json", metadata_json(unrelated))
    storage.put(f"{unrelated}/rootfs.ext4", b"x" * 4096)
    return rootfs, memfile


def expected_keys(
    rootfs: Chain, memfile: Chain, memfile_suffix: str = "", rootfs_suffix: str = ""
) -> set[str]:
    top = rootfs.top
    return {
        f"{top}/metadata.json",
        f"{top}/snapfile",
        f"{top}/memfile.header",
        f"{top}/rootfs.ext4.header",
        f"{memfile.builds[0]}/memfile",
        f"{top}/memfile{memfile_suffix}",
        f"{rootfs.builds[0]}/rootfs.ext4",
        f"{rootfs.builds[1]}/rootfs.ext4",
        f"{top}/rootfs.ext4{rootfs_suffix}",
    }


@pytest.fixture
def source(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "source" / "templates")


@pytest.fixture(params=["local", "memory"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "destination" / "templates")
    return MemoryStorage("copy-destination")


def test_copy_brings_exactly_the_referenced_objects_byte_for_byte(
    source: LocalStorage, destination: Storage
) -> None:
    rootfs, memfile = store_builds(source)
    report = copy_build(rootfs.top, source, destination)
    wanted = expected_keys(rootfs, memfile)
    assert set(destination.list("")) == wanted
    for key in wanted:
        assert destination.get(key) == source.get(key), key
    assert (report.files, report.copied, report.skipped) == (len(wanted), len(wanted), 0)
    assert report.bytes_copied == sum(len(source.get(key)) for key in wanted)


def test_second_copy_skips_every_object(source: LocalStorage, destination: Storage) -> None:
    rootfs, _ = store_builds(source)
    copy_build(rootfs.top, source, destination)
    events: list[CopyEvent] = []
    report = copy_build(str(rootfs.top), source, destination, progress=events.append)
    assert (report.copied, report.skipped, report.bytes_copied) == (0, report.files, 0)
    finished = [event for event in events if isinstance(event, FileFinished)]
    assert len(finished) == report.files
    assert all(event.message.endswith("already exists, skipping") for event in finished)


def test_changed_destination_object_is_copied_again(source: LocalStorage, tmp_path: Path) -> None:
    rootfs, _ = store_builds(source)
    destination = LocalStorage(tmp_path / "destination")
    copy_build(rootfs.top, source, destination)
    key = f"{rootfs.builds[1]}/rootfs.ext4"
    destination.put(key, b"stale")
    report = copy_build(rootfs.top, source, destination)
    assert report.copied == 1
    assert destination.get(key) == source.get(key)


def test_progress_prints_the_original_tool_lines_with_metadata_last(
    source: LocalStorage, tmp_path: Path
) -> None:
    rootfs, memfile = store_builds(source)
    destination = LocalStorage(tmp_path / "destination")
    events: list[CopyEvent] = []
    copy_build(rootfs.top, source, destination, workers=3, progress=events.append)
    files = len(expected_keys(rootfs, memfile))
    assert events[0] == CopyStarted(files)
    assert events[0].message == f"Copying {files} files"
    started = [event for event in events if isinstance(event, FileStarted)]
    assert len(started) == files
    metadata_key = f"{rootfs.top}/metadata.json"
    assert started[-1].message == (
        f"+ copying '{source.url}/{metadata_key}' to '{destination.url}/{metadata_key}'"
    )
    finished = [event for event in events if isinstance(event, FileFinished)]
    assert [event.done for event in finished] == list(range(1, files + 1))
    assert events[-1].message == f"-> [{files}/{files}] '{destination.url}/{metadata_key}' copied"


def test_missing_ancestor_object_fails_and_leaves_no_metadata(
    source: LocalStorage, destination: Storage
) -> None:
    rootfs, _ = store_builds(source)
    missing = f"{rootfs.builds[0]}/rootfs.ext4"
    source.delete_prefix(missing)
    with pytest.raises(BuildError, match=missing):
        copy_build(rootfs.top, source, destination, workers=2)
    assert not destination.exists(f"{rootfs.top}/metadata.json")
    assert not destination.exists(missing)
    for key in destination.list(""):
        assert destination.get(key) == source.get(key), key


def test_build_without_metadata_is_reported_as_not_found(source: LocalStorage, destination: Storage) -> None:
    build = uuid.uuid4()
    with pytest.raises(BuildError, match=f"{build} has no metadata.json"):
        copy_build(build, source, destination)
    assert destination.list("") == []


def test_filesystem_only_build_copies_no_memory_objects(source: LocalStorage, destination: Storage) -> None:
    rootfs, _ = store_builds(source)
    source.put(f"{rootfs.top}/metadata.json", metadata_json(rootfs.top, filesystem_only=True))
    source.delete_prefix(f"{rootfs.top}/memfile")
    source.delete_prefix(f"{rootfs.top}/snapfile")
    copy_build(rootfs.top, source, destination)
    assert set(destination.list("")) == {
        f"{rootfs.top}/metadata.json",
        f"{rootfs.top}/rootfs.ext4.header",
        f"{rootfs.builds[0]}/rootfs.ext4",
        f"{rootfs.builds[1]}/rootfs.ext4",
        f"{rootfs.top}/rootfs.ext4",
    }


def test_compressed_data_objects_are_copied_under_their_suffix(
    source: LocalStorage, destination: Storage
) -> None:
    rootfs, memfile = store_builds(source, compression={2: CompressionType.LZ4})
    copy_build(rootfs.top, source, destination)
    wanted = expected_keys(rootfs, memfile, memfile_suffix=".lz4", rootfs_suffix=".lz4")
    assert set(destination.list("")) == wanted
    for key in wanted:
        assert destination.get(key) == source.get(key), key


def test_zero_workers_is_a_usage_error(source: LocalStorage, destination: Storage) -> None:
    with pytest.raises(UsageError, match="workers must be at least 1"):
        copy_build(uuid.uuid4(), source, destination, workers=0)


@pytest.mark.parametrize("compression", [None, {2: CompressionType.LZ4}, {2: CompressionType.ZSTD}])
def test_a_data_object_shorter_than_its_header_needs_fails_the_copy_before_metadata(
    source: LocalStorage, destination: Storage, compression: dict[int, CompressionType] | None
) -> None:
    rootfs, _ = store_builds(source, compression=compression)
    suffix = {None: "", CompressionType.LZ4: ".lz4", CompressionType.ZSTD: ".zstd"}
    key = f"{rootfs.top}/rootfs.ext4{suffix[(compression or {}).get(2)]}"
    whole = source.get(key)
    source.put(key, whole[: len(whole) - 1])
    with pytest.raises(BuildError) as caught:
        copy_build(rootfs.top, source, destination)
    message = str(caught.value)
    assert f"build {rootfs.top}: {key!r} is {len(whole) - 1} bytes" in message
    assert f"reads up to byte {len(whole)}: the object is truncated" in message
    assert "metadata.json was not written" in message
    assert not destination.exists(f"{rootfs.top}/metadata.json")


def test_a_copy_of_complete_compressed_objects_checks_the_frames_it_reads(
    source: LocalStorage, destination: Storage
) -> None:
    rootfs, _ = store_builds(source, compression={0: CompressionType.ZSTD, 2: CompressionType.LZ4})
    report = copy_build(rootfs.top, source, destination)
    assert destination.exists(f"{rootfs.top}/metadata.json")
    assert report.removed_temporaries == ()

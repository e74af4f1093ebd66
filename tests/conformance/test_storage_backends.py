"""One behaviour suite for every backend: local, memory, chunk cache, GCS (emulator), S3 (moto)."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import google_crc32c
import pytest

from ember.errors import ObjectExists, ObjectNotFound, StorageUnreachable, UsageError
from ember.storage import ChunkCache, LocalStorage, MemoryStorage, Storage
from ember.storage.gcs import GcsStorage
from ember.storage.s3 import S3Storage

BUILD = "9f1c2a4e-0b7d-4c55-9a0e-3f6f3b1d2c11"
OTHER_BUILD = "1d2e3f40-5a6b-4c7d-8e9f-a0b1c2d3e4f5"
MIB = 1 << 20


def _s3(endpoint: Any, bucket: str, prefix: str = "") -> S3Storage:
    return S3Storage(
        bucket,
        prefix,
        endpoint_url=endpoint.url,
        region=endpoint.region,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
    )


@pytest.fixture(
    params=[
        "local",
        "memory",
        "cached-local",
        pytest.param("gcs", marks=pytest.mark.emulator),
        pytest.param("s3", marks=pytest.mark.emulator),
    ]
)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """A fresh, empty store of each kind (buckets get a unique prefix per test)."""
    prefix = f"test-{uuid.uuid4().hex}"
    if request.param == "local":
        yield LocalStorage(tmp_path / "store")
    elif request.param == "memory":
        yield MemoryStorage(prefix)
    elif request.param == "cached-local":
        cache = ChunkCache(LocalStorage(tmp_path / "store"), tmp_path / "cache")
        yield cache
        cache.close()
    elif request.param == "gcs":
        endpoint = request.getfixturevalue("gcs_emulator")
        yield GcsStorage(endpoint.bucket, prefix, emulator_host=endpoint.url)
    else:
        endpoint = request.getfixturevalue("s3_server")
        yield _s3(endpoint, endpoint.bucket, prefix)


def test_get_returns_what_put_stored_and_put_replaces(storage: Storage) -> None:
    storage.put(f"{BUILD}/metadata.json", b'{"version": 2}')
    assert storage.get(f"{BUILD}/metadata.json") == b'{"version": 2}'
    storage.put(f"{BUILD}/metadata.json", b"replaced")
    assert storage.get(f"{BUILD}/metadata.json") == b"replaced"


def test_create_exclusive_stores_a_new_object_and_refuses_an_existing_one(storage: Storage) -> None:
    key = f"{BUILD}/.ember-claim"
    storage.create_exclusive(key, b"first writer")
    assert storage.get(key) == b"first writer"
    with pytest.raises(ObjectExists) as caught:
        storage.create_exclusive(key, b"second writer")
    assert caught.value.key == key
    assert "already exists" in str(caught.value)
    assert storage.get(key) == b"first writer"
    storage.put(f"{BUILD}/metadata.json", b"{}")
    with pytest.raises(ObjectExists):
        storage.create_exclusive(f"{BUILD}/metadata.json", b"other")
    assert storage.list(f"{BUILD}/") == [key, f"{BUILD}/metadata.json"]


def test_gcs_maps_a_failed_generation_precondition_to_object_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """gcp-storage-emulator ignores ``ifGenerationMatch``; GCS answers 412, which this plays."""
    from google.api_core import exceptions as api_exceptions

    store = GcsStorage("ember-test", emulator_host="http://127.0.0.1:9")
    uploads: list[dict[str, Any]] = []

    class RacedBlob:
        def upload_from_string(self, data: bytes, **options: Any) -> None:
            uploads.append(options)
            raise api_exceptions.PreconditionFailed("At least one of the pre-conditions did not hold")

    monkeypatch.setattr(store, "exists", lambda key: False)
    monkeypatch.setattr(store, "_blob", lambda key: RacedBlob())
    with pytest.raises(ObjectExists):
        store.create_exclusive(f"{BUILD}/.ember-claim", b"x")
    assert uploads[0]["if_generation_match"] == 0


def test_empty_object_round_trips(storage: Storage) -> None:
    if isinstance(storage, GcsStorage):
        pytest.skip("gcp-storage-emulator sends an invalid Content-Range ('bytes 0--1/0') for empty objects")
    storage.put(f"{BUILD}/snapfile", b"")
    assert storage.get(f"{BUILD}/snapfile") == b""
    assert storage.size(f"{BUILD}/snapfile") == 0


def test_read_range_returns_the_slice_and_is_short_only_at_the_end(storage: Storage) -> None:
    data = bytes(range(256)) * 40
    storage.put(f"{BUILD}/memfile", data)
    key = f"{BUILD}/memfile"
    assert storage.read_range(key, 100, 300) == data[100:400]
    assert storage.read_range(key, 0, len(data)) == data
    assert storage.read_range(key, len(data) - 10, 100) == data[-10:]
    assert storage.read_range(key, len(data), 5) == b""
    assert storage.read_range(key, len(data) + 4096, 5) == b""
    assert storage.read_range(key, 7, 0) == b""


def test_read_range_into_fills_the_buffer_and_is_short_only_at_the_end(storage: Storage) -> None:
    data = bytes(range(256)) * 40
    key = f"{BUILD}/memfile"
    storage.put(key, data)
    buffer = bytearray(b"\xee" * 400)
    assert storage.read_range_into(key, 100, memoryview(buffer)[50:350]) == 300
    assert buffer == b"\xee" * 50 + data[100:400] + b"\xee" * 50
    whole = bytearray(len(data))
    assert storage.read_range_into(key, 0, whole) == len(data)
    assert whole == data
    tail = bytearray(b"\xee" * 100)
    assert storage.read_range_into(key, len(data) - 10, tail) == 10
    assert tail == data[-10:] + b"\xee" * 90
    assert storage.read_range_into(key, len(data), tail) == 0
    assert storage.read_range_into(key, len(data) + 4096, tail) == 0
    assert storage.read_range_into(key, 7, bytearray()) == 0
    assert tail == data[-10:] + b"\xee" * 90


def test_read_range_into_rejects_read_only_buffers_and_negative_offsets(storage: Storage) -> None:
    key = f"{BUILD}/memfile"
    storage.put(key, b"0123456789")
    with pytest.raises(UsageError, match="writable"):
        storage.read_range_into(key, 0, memoryview(b"read-only"))
    with pytest.raises(UsageError, match="offset=-1"):
        storage.read_range_into(key, -1, bytearray(4))


def test_ranges_past_2_63_are_refused_before_they_reach_the_backend(storage: Storage) -> None:
    key = f"{BUILD}/memfile"
    storage.put(key, b"0123456789")
    with pytest.raises(UsageError, match="ends past byte 2\\^63 - 1"):
        storage.read_range(key, 1 << 63, 1)
    with pytest.raises(UsageError, match="ends past byte 2\\^63 - 1"):
        storage.read_range_into(key, (1 << 63) - 2, bytearray(4))


def test_size_and_exists_report_the_object(storage: Storage) -> None:
    storage.put(f"{BUILD}/rootfs.ext4", b"x" * 12345)
    assert storage.size(f"{BUILD}/rootfs.ext4") == 12345
    assert storage.exists(f"{BUILD}/rootfs.ext4")
    assert not storage.exists(f"{BUILD}/rootfs.ext4.header")


def test_list_returns_sorted_keys_under_a_string_prefix(storage: Storage) -> None:
    for name in ("snapfile", "memfile.header", "memfile", "rootfs.ext4"):
        storage.put(f"{BUILD}/{name}", name.encode())
    storage.put(f"{OTHER_BUILD}/memfile", b"other")
    assert storage.list(f"{BUILD}/") == [
        f"{BUILD}/memfile",
        f"{BUILD}/memfile.header",
        f"{BUILD}/rootfs.ext4",
        f"{BUILD}/snapfile",
    ]
    assert storage.list(f"{BUILD}/mem") == [f"{BUILD}/memfile", f"{BUILD}/memfile.header"]
    assert storage.list("") == sorted([*storage.list(f"{BUILD}/"), f"{OTHER_BUILD}/memfile"])
    assert storage.list("no-such-build/") == []


def test_delete_prefix_removes_only_matching_objects_and_counts_them(storage: Storage) -> None:
    for name in ("memfile", "memfile.header", "snapfile"):
        storage.put(f"{BUILD}/{name}", b"1")
    storage.put(f"{OTHER_BUILD}/memfile", b"2")
    assert storage.delete_prefix(f"{BUILD}/") == 3
    assert storage.list(f"{BUILD}/") == []
    assert storage.get(f"{OTHER_BUILD}/memfile") == b"2"
    assert storage.delete_prefix(f"{BUILD}/") == 0


def test_crc32c_is_the_castagnoli_checksum_of_the_content(storage: Storage) -> None:
    data = os.urandom(70_000)
    storage.put(f"{BUILD}/memfile.header", data)
    assert storage.crc32c(f"{BUILD}/memfile.header") == google_crc32c.value(data)


def test_put_file_and_get_to_file_round_trip_a_multi_mib_file(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "upload.bin"
    data = os.urandom(9 * MIB + 123)
    source.write_bytes(data)
    storage.put_file(f"{BUILD}/memfile", source)
    assert storage.size(f"{BUILD}/memfile") == len(data)
    assert storage.crc32c(f"{BUILD}/memfile") == google_crc32c.value(data)
    target = tmp_path / "download" / "memfile"
    storage.get_to_file(f"{BUILD}/memfile", target)
    assert target.read_bytes() == data
    assert storage.read_range(f"{BUILD}/memfile", 4 * MIB - 10, 20) == data[4 * MIB - 10 : 4 * MIB + 10]
    spanning = bytearray(5 * MIB)
    assert storage.read_range_into(f"{BUILD}/memfile", 3 * MIB + 7, spanning) == 5 * MIB
    assert spanning == data[3 * MIB + 7 : 8 * MIB + 7]


def test_move_file_stores_the_scratch_file_like_put_file(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "memfile.scratch"
    data = os.urandom(5 * MIB + 3)
    source.write_bytes(data)
    storage.move_file(f"{BUILD}/memfile", source)
    assert storage.get(f"{BUILD}/memfile") == data
    assert storage.list(f"{BUILD}/") == [f"{BUILD}/memfile"]


@pytest.mark.parametrize(
    "operation",
    [
        lambda s: s.get(f"{BUILD}/memfile"),
        lambda s: s.read_range(f"{BUILD}/memfile", 0, 10),
        lambda s: s.read_range_into(f"{BUILD}/memfile", 0, bytearray(10)),
        lambda s: s.size(f"{BUILD}/memfile"),
        lambda s: s.crc32c(f"{BUILD}/memfile"),
    ],
    ids=["get", "read_range", "read_range_into", "size", "crc32c"],
)
def test_missing_object_raises_object_not_found_naming_the_key(
    storage: Storage, operation: Callable[[Storage], object]
) -> None:
    with pytest.raises(ObjectNotFound) as caught:
        operation(storage)
    assert caught.value.key == f"{BUILD}/memfile"


def test_failed_get_to_file_leaves_no_file_behind(storage: Storage, tmp_path: Path) -> None:
    target_dir = tmp_path / "out"
    target_dir.mkdir()
    with pytest.raises(ObjectNotFound):
        storage.get_to_file(f"{BUILD}/snapfile", target_dir / "snapfile")
    assert list(target_dir.iterdir()) == []


def test_keys_that_could_escape_the_store_are_rejected(storage: Storage) -> None:
    for key in ("", "/abs", f"{BUILD}/../x", f"{BUILD}//memfile", "./memfile"):
        with pytest.raises(UsageError):
            storage.put(key, b"x")


@pytest.mark.emulator
@pytest.mark.timeout(30)
def test_gcs_at_a_closed_port_is_unreachable_within_seconds(closed_port_url: str) -> None:
    store = GcsStorage("ember-test", emulator_host=closed_port_url)
    with pytest.raises(StorageUnreachable):
        store.get(f"{BUILD}/memfile")


@pytest.mark.emulator
@pytest.mark.timeout(30)
def test_s3_at_a_closed_port_is_unreachable_within_seconds(s3_server: Any, closed_port_url: str) -> None:
    store = _s3(dataclasses.replace(s3_server, url=closed_port_url), s3_server.bucket)
    with pytest.raises(StorageUnreachable):
        store.get(f"{BUILD}/memfile")


def _missing_bucket_stores(request: pytest.FixtureRequest) -> list[Storage]:
    gcs = request.getfixturevalue("gcs_emulator")
    s3 = request.getfixturevalue("s3_server")
    return [GcsStorage("no-such-bucket", emulator_host=gcs.url), _s3(s3, "no-such-bucket")]


@pytest.mark.emulator
@pytest.mark.parametrize(
    "operation",
    [
        lambda s: s.get(f"{BUILD}/memfile"),
        lambda s: s.size(f"{BUILD}/memfile"),
        lambda s: s.exists(f"{BUILD}/memfile"),
        lambda s: s.list(""),
        lambda s: s.read_range(f"{BUILD}/memfile", 0, 1),
        lambda s: s.read_range_into(f"{BUILD}/memfile", 0, bytearray(1)),
    ],
    ids=["get", "size", "exists", "list", "read_range", "read_range_into"],
)
def test_missing_bucket_is_unreachable_not_a_missing_object(
    request: pytest.FixtureRequest, operation: Callable[[Storage], object]
) -> None:
    for store in _missing_bucket_stores(request):
        with pytest.raises(StorageUnreachable) as caught:
            operation(store)
        assert "no-such-bucket" in str(caught.value)

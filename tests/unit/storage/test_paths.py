from __future__ import annotations

from uuid import UUID

import pytest

from ember.errors import UsageError
from ember.storage import MEMFILE, ROOTFS, BuildPaths, data_file_name

BUILD = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"


def test_every_object_name_matches_the_bucket_layout() -> None:
    paths = BuildPaths(BUILD)
    assert paths.memfile == f"{BUILD}/memfile"
    assert paths.memfile_header == f"{BUILD}/memfile.header"
    assert paths.rootfs == f"{BUILD}/rootfs.ext4"
    assert paths.rootfs_header == f"{BUILD}/rootfs.ext4.header"
    assert paths.snapfile == f"{BUILD}/snapfile"
    assert paths.metadata == f"{BUILD}/metadata.json"
    assert paths.prefix == f"{BUILD}/"
    assert paths.header(ROOTFS) == paths.rootfs_header


@pytest.mark.parametrize(("code", "suffix"), [(0, ""), (1, ".zstd"), (2, ".lz4")])
def test_data_objects_take_the_compression_suffix_but_headers_never_do(code: int, suffix: str) -> None:
    paths = BuildPaths(BUILD)
    assert paths.data_object(MEMFILE, code) == f"{BUILD}/memfile{suffix}"
    assert paths.data_object(ROOTFS, code) == f"{BUILD}/rootfs.ext4{suffix}"
    assert data_file_name(MEMFILE, code) == f"memfile{suffix}"


def test_uuid_objects_and_upper_case_strings_give_canonical_keys() -> None:
    assert BuildPaths(UUID(BUILD)) == BuildPaths(BUILD.upper())
    assert BuildPaths(UUID(BUILD)).build_id == BUILD


@pytest.mark.parametrize(
    "call",
    [
        lambda: BuildPaths("not-a-uuid"),
        lambda: BuildPaths(BUILD).data_object("snapfile", 0),
        lambda: BuildPaths(BUILD).data_object(MEMFILE, 3),
        lambda: BuildPaths(BUILD).header("metadata.json"),
    ],
)
def test_bad_names_are_usage_errors(call: object) -> None:
    with pytest.raises(UsageError):
        call()  # type: ignore[operator]

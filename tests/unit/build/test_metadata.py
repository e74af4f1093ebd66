import json

import pytest

from ember.build.metadata import (
    Context,
    MemoryPrefetch,
    Start,
    TemplateInfo,
    TemplateMetadata,
    parse_metadata,
)
from ember.errors import MetadataError

BUILD_ID = "8c4b2e5e-5f4a-4e0b-9a44-1b1f0b6b2a10"

FULL_V2 = {
    "version": 2,
    "template": {
        "build_id": "8c4b2e5e-5f4a-4e0b-9a44-1b1f0b6b2a10",
        "kernel_version": "vmlinux-6.1.158",
        "firecracker_version": "v1.14.1_431f1fc",
    },
    "context": {"user": "user", "workdir": "/home/user", "env_vars": {"A": "1"}},
    "start": {
        "start_command": "npm start",
        "ready_command": "curl localhost:3000",
        "context": {"user": "root"},
    },
    "from_image": "e2bdev/base:latest",
    "from_template": {"alias": "base", "build_id": "0d6f7c1e-1111-4e0b-9a44-1b1f0b6b2a10"},
    "prefetch": {"memory": {"indices": [5, 1, 9], "access_types": ["r", "w", "p"], "block_size": 2097152}},
    "cmdline_args": {"mitigations": "off"},
    "filesystem_only": True,
    "fs_quiesced": True,
}


def test_full_v2_document_round_trips_byte_for_byte() -> None:
    encoded = json.dumps(FULL_V2, separators=(",", ":")).encode()
    parsed = parse_metadata(encoded)
    assert parsed.template.kernel_version == "vmlinux-6.1.158"
    assert parsed.context == Context(user="user", workdir="/home/user", env_vars={"A": "1"})
    assert parsed.prefetch == MemoryPrefetch(
        indices=(5, 1, 9), access_types=("r", "w", "p"), block_size=2097152
    )
    assert parsed.to_json() == encoded


@pytest.mark.parametrize(
    "raw",
    [
        '{"version":1}',
        '{"version":0}',
        '{"version":"1"}',
        "{}",
        '{"version":1.0}',
        '{"version":-3}',
        '{"version":null}',
        '{"version":true}',
    ],
)
def test_deprecated_versions_keep_only_the_version(raw: str) -> None:
    document = json.loads(raw)
    document["template"] = {"build_id": "x", "kernel_version": "k"}
    parsed = parse_metadata(json.dumps(document).encode())
    assert parsed == TemplateMetadata(version=1)
    assert parsed.to_json() == b'{"version":1}'


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1,2]"])
def test_invalid_json_is_a_version_error(raw: bytes) -> None:
    with pytest.raises(MetadataError, match="error unmarshaling template version"):
        parse_metadata(raw)


def test_wrongly_typed_field_is_a_metadata_error() -> None:
    with pytest.raises(MetadataError, match="error unmarshaling template metadata"):
        parse_metadata(b'{"version":2,"template":"x"}')


def test_prefetch_survives_a_file_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    meta = TemplateMetadata(
        version=2,
        template=TemplateInfo(build_id="b"),
        prefetch=MemoryPrefetch(indices=(3, 4), access_types=("r", "r"), block_size=4096),
    )
    path = tmp_path / "metadata.json"
    path.write_bytes(meta.to_json())
    assert parse_metadata(path.read_bytes()) == meta


def test_paused_build_metadata_drops_what_described_the_parent_snapshot() -> None:
    parent = TemplateMetadata(
        version=2,
        template=TemplateInfo(build_id="old", kernel_version="k", firecracker_version="f"),
        start=Start(start_command="s"),
        prefetch=MemoryPrefetch(indices=(1,), access_types=("r",), block_size=4096),
        filesystem_only=True,
        fs_quiesced=True,
    )
    child = parent.same_version_template(
        TemplateInfo(build_id="new", kernel_version="k", firecracker_version="f")
    )
    assert child.template.build_id == "new"
    assert child.start == parent.start
    assert (child.prefetch, child.filesystem_only, child.fs_quiesced) == (None, False, False)


def test_filesystem_only_forces_version_two() -> None:
    assert json.loads(TemplateMetadata(version=1, filesystem_only=True).to_json())["version"] == 2


def test_html_characters_are_escaped_like_the_original() -> None:
    meta = TemplateMetadata(
        version=2, template=TemplateInfo(build_id=BUILD_ID), start=Start(start_command="a && b > c")
    )
    assert b"a \\u0026\\u0026 b \\u003e c" in meta.to_json()
    assert parse_metadata(meta.to_json()).start == Start(start_command="a && b > c")


def test_an_empty_document_parses_as_the_deprecated_format_but_is_not_resumable() -> None:
    metadata = parse_metadata(b"{}")
    assert metadata == TemplateMetadata(version=1)
    with pytest.raises(
        MetadataError,
        match=f"metadata.json of build {BUILD_ID} has no template section: the build is corrupt or not a",
    ):
        metadata.require_resumable(BUILD_ID)


def test_a_current_document_without_a_template_build_id_is_refused_when_parsed() -> None:
    for document in (
        {"version": 2},
        {"version": 2, "template": {}},
        {"version": 3, "template": {"build_id": ""}},
    ):
        with pytest.raises(MetadataError, match=f"metadata.json of build {BUILD_ID} has no template section"):
            parse_metadata(json.dumps(document).encode(), BUILD_ID)


def test_a_complete_document_is_resumable() -> None:
    metadata = parse_metadata(json.dumps(FULL_V2).encode(), BUILD_ID)
    assert metadata.require_resumable(BUILD_ID) is metadata

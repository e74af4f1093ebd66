"""Messages <-> protobuf and proto3 JSON, checked against the e2b SDK's own generated classes."""

from __future__ import annotations

import json

import pytest

from ember.envd.agent import codec
from ember.envd.agent.schema import MESSAGES, Kind

EVENT = {"event": {"end": {"exit_code": -3, "status": "signal: killed", "error": ""}}}


def test_every_message_field_is_declared_once_with_a_known_type() -> None:
    for name, fields in MESSAGES.items():
        assert len({f.number for f in fields}) == len(fields), name
        for field in fields:
            if field.kind is Kind.MESSAGE:
                assert field.type_name in MESSAGES, (name, field.name)


def test_proto_round_trip_keeps_negative_sint32_and_optional_empty_strings() -> None:
    data = codec.encode("process.StartResponse", EVENT)
    assert codec.decode("process.StartResponse", data) == EVENT


def test_defaults_are_left_out_unless_the_field_has_presence() -> None:
    assert codec.encode("process.ProcessEvent.EndEvent", {"exit_code": 0, "exited": False}) == b""
    assert codec.encode("process.ProcessSelector", {"pid": 0}) == b"\x08\x00"
    assert codec.to_json("process.ProcessEvent", {"keepalive": {}}) == {"keepalive": {}}


def test_json_uses_lower_camel_names_base64_int64_strings_and_enum_names() -> None:
    entry = {
        "name": "f",
        "type": 1,
        "size": 5,
        "modified_time": {"seconds": 1, "nanos": 500},
        "is_symlink": True,
    }
    assert codec.to_json("filesystem.EntryInfo", entry) == {
        "name": "f",
        "type": "FILE_TYPE_FILE",
        "size": "5",
        "modifiedTime": "1970-01-01T00:00:01.000000500Z",
        "isSymlink": True,
    }
    assert codec.to_json("process.ProcessInput", {"stdin": b"\x00\xff"}) == {"stdin": "AP8="}


def test_json_input_accepts_proto_names_numbers_and_url_safe_base64() -> None:
    parsed = codec.from_json(
        "process.SendSignalRequest", {"process": {"pid": "12"}, "signal": 9}
    ) | codec.from_json("process.ProcessInput", {"stdin": "AP8"})
    assert parsed == {"process": {"pid": 12}, "signal": 9, "stdin": b"\x00\xff"}
    assert codec.from_json("filesystem.WatchDirRequest", {"include_entry": True}) == {"include_entry": True}


@pytest.mark.parametrize(
    ("type_name", "value", "complaint"),
    [
        ("filesystem.ListDirRequest", {"depth": "deep"}, "depth must be an integer"),
        ("filesystem.ListDirRequest", {"depth": -1}, "out of range"),
        ("process.SendSignalRequest", {"signal": "SIGHUP"}, "unknown process.Signal"),
        ("process.ProcessInput", {"stdin": "not base64!"}, "not valid base64"),
        ("filesystem.StatRequest", [], "must be a JSON object"),
        ("filesystem.EntryInfo", {"modifiedTime": "yesterday"}, "RFC 3339"),
    ],
)
def test_json_of_the_wrong_shape_is_refused_naming_the_field(
    type_name: str, value: object, complaint: str
) -> None:
    with pytest.raises(codec.CodecError, match=complaint):
        codec.from_json(type_name, value)


def test_proto_with_a_mismatched_wire_type_is_refused() -> None:
    with pytest.raises(codec.CodecError, match="wire type"):
        codec.decode("filesystem.StatRequest", b"\x08\x01")


def test_unknown_fields_are_skipped() -> None:
    assert codec.decode("filesystem.StatRequest", b"\x0a\x01a\x78\x05") == {"path": "a"}
    assert codec.from_json("filesystem.StatRequest", {"path": "a", "future": 1}) == {"path": "a"}


def test_rfc3339_offsets_and_fractions() -> None:
    assert codec.parse_rfc3339("1970-01-01T01:00:01.25+01:00") == (1, 250_000_000)


# Cross-checks against the official SDK's generated message classes (a test extra).
protobuf = pytest.importorskip("protobuf", reason="the e2b SDK (test extra) brings the protobuf runtime")
process_pb = pytest.importorskip("e2b.envd.process.process_pb")
filesystem_pb = pytest.importorskip("e2b.envd.filesystem.filesystem_pb")


def test_sdk_start_request_decodes_to_the_same_fields() -> None:
    sdk = process_pb.StartRequest(
        process=process_pb.ProcessConfig(
            cmd="/bin/bash", args=["-l", "-c", "echo"], envs={"A": "1"}, cwd="/tmp"
        ),
        stdin=False,
        tag="t",
    )
    expected = {
        "process": {"cmd": "/bin/bash", "args": ["-l", "-c", "echo"], "envs": {"A": "1"}, "cwd": "/tmp"},
        "stdin": False,
        "tag": "t",
    }
    assert codec.decode("process.StartRequest", sdk.to_binary()) == expected
    assert codec.from_json("process.StartRequest", json.loads(sdk.to_json())) == expected


def test_our_process_events_parse_in_the_sdk() -> None:
    message = {"event": {"data": {"stderr": b"\x00err"}}}
    sdk = process_pb.StartResponse.from_binary(codec.encode("process.StartResponse", message))
    assert sdk.event.event.field == "data" and sdk.event.event.value.output.value == b"\x00err"
    end = process_pb.StartResponse.from_json(json.dumps(codec.to_json("process.StartResponse", EVENT)))
    assert (end.event.event.value.exit_code, end.event.event.value.error) == (-3, "")


def test_our_entry_info_parses_in_the_sdk_with_both_codecs() -> None:
    entry = {
        "name": "f", "type": 2, "path": "/f", "size": 1 << 40, "mode": 0o755, "permissions": "drwxr-xr-x",
        "owner": "root", "group": "root", "modified_time": {"seconds": 1_700_000_000, "nanos": 5},
        "symlink_target": "/g", "is_symlink": True,
    }  # fmt: skip
    for sdk in (
        filesystem_pb.EntryInfo.from_binary(codec.encode("filesystem.EntryInfo", entry)),
        filesystem_pb.EntryInfo.from_json(json.dumps(codec.to_json("filesystem.EntryInfo", entry))),
    ):
        assert (sdk.size, sdk.mode, sdk.type, sdk.symlink_target) == (
            1 << 40,
            0o755,
            filesystem_pb.FileType.DIRECTORY,
            "/g",
        )
        assert (sdk.modified_time.seconds, sdk.modified_time.nanos, sdk.is_symlink) == (
            1_700_000_000,
            5,
            True,
        )

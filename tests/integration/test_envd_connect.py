"""The Connect protocol edges of the bundled agent: both codecs agree, bad requests get Connect errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from envd_agent import Agent, envelopes, request, unary_json

from ember.envd import EnvdClient
from ember.envd.agent import codec


def test_json_and_proto_unary_replies_describe_the_same_entry(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    status, as_json = unary_json(agent.url, "filesystem.Filesystem/Stat", {"path": str(tmp_path / "f")})
    as_proto = EnvdClient(agent.url).unary("filesystem.Filesystem/Stat", {"path": str(tmp_path / "f")})
    assert status == 200
    assert codec.from_json("filesystem.StatResponse", as_json) == as_proto
    assert as_json["entry"]["size"] == "3" and as_json["entry"]["type"] == "FILE_TYPE_FILE"


def test_proto_stream_frames_every_event_and_ends_cleanly(agent: Agent) -> None:
    payload = codec.encode("process.StartRequest", {"process": {"cmd": "/bin/echo", "args": ["x"]}})
    status, headers, body = request(
        agent.url, "/process.Process/Start", struct.pack(">BI", 0, len(payload)) + payload,
        {"Content-Type": "application/connect+proto"},
    )  # fmt: skip
    frames = envelopes(body)
    events = [codec.decode("process.StartResponse", data)["event"] for _, data in frames[:-1]]
    assert (status, headers["Content-Type"]) == (200, "application/connect+proto")
    assert [next(iter(event)) for event in events] == ["start", "data", "end"]
    assert frames[-1] == (2, b"{}")


def test_malformed_json_is_invalid_argument(agent: Agent) -> None:
    status, _, body = request(
        agent.url, "/filesystem.Filesystem/Stat", b"{oops", {"Content-Type": "application/json"}
    )
    assert (status, json.loads(body)["code"]) == (400, "invalid_argument")


def test_field_of_the_wrong_type_is_invalid_argument(agent: Agent) -> None:
    status, error = unary_json(agent.url, "filesystem.Filesystem/ListDir", {"path": "/", "depth": "deep"})
    assert (status, error["code"]) == (400, "invalid_argument")
    assert "depth" in error["message"]


def test_malformed_proto_is_invalid_argument(agent: Agent) -> None:
    status, _, body = request(
        agent.url, "/filesystem.Filesystem/Stat", b"\x0a\x7fshort", {"Content-Type": "application/proto"}
    )
    assert (status, json.loads(body)["code"]) == (400, "invalid_argument")


def test_missing_path_is_not_found_with_a_message(agent: Agent) -> None:
    status, error = unary_json(agent.url, "filesystem.Filesystem/Stat", {"path": "/no/such/path"})
    assert status == 404
    assert error == {"code": "not_found", "message": "stat '/no/such/path': no such file or directory"}


def test_unsupported_content_type_is_415(agent: Agent) -> None:
    status, _, _ = request(agent.url, "/process.Process/List", b"{}", {"Content-Type": "text/plain"})
    assert status == 415


def test_unknown_method_is_404(agent: Agent) -> None:
    status, _, body = request(agent.url, "/process.Process/Nope", b"{}", {"Content-Type": "application/json"})
    assert status == 404
    assert json.loads(body)["code"] == 404


def test_stream_errors_arrive_in_the_end_of_stream_message(agent: Agent) -> None:
    payload = json.dumps({"process": {"pid": 999_999_999}}).encode()
    status, _, body = request(
        agent.url, "/process.Process/Connect", struct.pack(">BI", 0, len(payload)) + payload,
        {"Content-Type": "application/connect+json"},
    )  # fmt: skip
    frames = envelopes(body)
    assert status == 200 and len(frames) == 1 and frames[0][0] == 2
    assert json.loads(frames[0][1])["error"]["code"] == "not_found"


def test_a_bad_timeout_header_is_invalid_argument(agent: Agent) -> None:
    status, error = unary_json(agent.url, "process.Process/List", {}, **{"Connect-Timeout-Ms": "soon"})
    assert (status, error["code"]) == (400, "invalid_argument")

"""The template build requests, checked before anything reaches a node: names, tags, steps, sources."""

from __future__ import annotations

from typing import Any

import pytest

from ember.api.builds import BuildRequest, BuildStart, parse_level
from ember.api.errors import ApiError
from ember.api.requests import Body
from ember.rpc import template_manager_pb2 as tpb

HASH = "c" * 64


def test_a_name_without_a_tag_builds_the_default_tag_plus_the_asked_ones() -> None:
    asked = BuildRequest.parse(Body({"name": " My-Tpl ", "tags": ["V1", "default", "v1"], "cpuCount": 4}))
    assert asked == BuildRequest("my-tpl", ("default", "v1"), 4, 1024)


def test_the_names_tag_replaces_default_and_the_deprecated_alias_is_a_name() -> None:
    assert BuildRequest.parse(Body({"name": "tpl:v2"})).tags == ("v2",)
    assert BuildRequest.parse(Body({"name": "tpl:default"})).tags == ("default",)
    legacy = BuildRequest.parse(Body({"alias": "old", "teamID": "ignored", "memoryMB": 128}))
    assert (legacy.name, legacy.ram_mb, legacy.vcpu) == ("old", 128, 2)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "x", "cpuCount": 0},
        {"name": "x", "memoryMB": 127},
        {"name": "x", "minFreeDiskMb": -1},
        {"name": "x", "tags": ["a b"]},
        {"name": "x", "tags": "v1"},
        {"name": "a:b:c"},
    ],
)
def test_bad_build_requests_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as caught:
        BuildRequest.parse(Body(body))
    assert caught.value.status == 400


def test_a_start_carries_its_steps_and_source() -> None:
    start = BuildStart.parse(
        Body(
            {
                "fromImage": "ubuntu:22.04",
                "fromImageRegistry": {"type": "registry", "username": "u", "password": "p"},
                "force": True,
                "steps": [
                    {"type": "copy", "args": ["a", "/b", "", ""], "filesHash": HASH, "force": False},
                    {"type": "RUN", "args": ["echo hi"], "forceUpload": True},
                ],
                "startCmd": "sleep infinity",
                "readyCmd": "sleep 1",
            }
        )
    )
    assert (start.from_image, start.from_template, start.force) == ("ubuntu:22.04", None, True)
    assert start.registry == tpb.FromImageRegistry(general=tpb.GeneralRegistry(username="u", password="p"))
    copy, run = start.steps
    assert (copy.type, list(copy.args), copy.filesHash, copy.HasField("force")) == (
        "COPY",
        ["a", "/b", "", ""],
        HASH,
        True,
    )
    assert (run.type, run.HasField("force"), run.HasField("filesHash")) == ("RUN", False, False)
    assert (start.start_cmd, start.ready_cmd) == ("sleep infinity", "sleep 1")
    aws = BuildStart.parse(
        Body(
            {
                "fromImage": "x",
                "fromImageRegistry": {
                    "type": "aws",
                    "awsAccessKeyId": "k",
                    "awsSecretAccessKey": "s",
                    "awsRegion": "r",
                },
            }
        )
    )
    assert aws.registry is not None and aws.registry.WhichOneof("type") == "aws"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"fromImage": "", "fromTemplate": ""},
        {"fromImage": "a", "fromTemplate": "b"},
        {"fromTemplate": "b", "fromImageRegistry": {"type": "registry", "username": "u", "password": "p"}},
        {"fromImage": "a", "fromImageRegistry": {"type": "docker"}},
        {"fromImage": "a", "steps": [{"type": "FROM", "args": []}]},
        {"fromImage": "a", "steps": [{"type": "COPY", "args": ["a", "b"]}]},
        {"fromImage": "a", "steps": ["RUN"]},
        {"fromImage": "a", "steps": [{"type": "RUN", "args": [1]}]},
    ],
)
def test_bad_starts_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as caught:
        BuildStart.parse(Body(body))
    assert caught.value.status == 400


def test_levels_are_the_sdks_names() -> None:
    assert parse_level(None) is None and parse_level("") is None
    assert [parse_level(name) for name in ("debug", "info", "warn", "ERROR")] == [
        tpb.Debug,
        tpb.Info,
        tpb.Warn,
        tpb.Error,
    ]
    with pytest.raises(ApiError):
        parse_level("loud")

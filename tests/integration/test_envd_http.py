"""envd's HTTP API against the bundled agent: health, init and access tokens, envs, files."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import pytest
from envd_agent import Agent, request, unary_json

from ember.envd import ENVD_VERSION, EnvdClient, EnvdError

TOKEN = "secret-token"
ALL_BYTES = bytes(range(256)) + b"\r\n\r\n--boundary\r\n" + bytes(range(255, -1, -1))


def test_health_answers_204(client: EnvdClient) -> None:
    assert client.health()


def test_health_is_false_when_nothing_listens() -> None:
    assert not EnvdClient("http://127.0.0.1:9").health()


def test_after_init_with_a_token_requests_without_it_get_401_json(agent: Agent) -> None:
    agent.client().init(access_token=TOKEN)
    status, _, body = request(agent.url, "/envs", method="GET")
    assert status == 401
    assert json.loads(body)["code"] == 401
    status, _, _ = request(agent.url, "/envs", method="GET", headers={"X-Access-Token": "wrong"})
    assert status == 401
    status, _, _ = request(agent.url, "/envs", method="GET", headers={"X-Access-Token": TOKEN})
    assert status == 200
    assert request(agent.url, "/health", method="GET")[0] == 204


def test_rpc_without_the_token_is_unauthenticated(agent: Agent) -> None:
    agent.client().init(access_token=TOKEN)
    status, error = unary_json(agent.url, "process.Process/List", {})
    assert (status, error["code"]) == (401, "unauthenticated")
    with pytest.raises(EnvdError) as caught:
        agent.client(access_token="wrong").list_processes()
    assert caught.value.code == "unauthenticated"
    assert agent.client(access_token=TOKEN).list_processes() == []


def test_files_need_the_token_too(agent: Agent) -> None:
    agent.client().init(access_token=TOKEN)
    with pytest.raises(EnvdError) as caught:
        agent.client().read_file("/etc/hostname")
    assert caught.value.code == "unauthenticated"


def test_the_token_cannot_be_replaced_without_presenting_it(agent: Agent) -> None:
    agent.client().init(access_token=TOKEN)
    with pytest.raises(EnvdError) as caught:
        agent.client().init(access_token="other")
    assert caught.value.code == "unauthenticated"
    authorized = agent.client(access_token=TOKEN)
    authorized.init(access_token="other")
    assert authorized.access_token == "other"
    assert authorized.envs()["HOME"] == str(agent.home)


def test_envs_returns_the_init_env_vars(client: EnvdClient, agent: Agent) -> None:
    client.init(env_vars={"A": "1"})
    client.init(env_vars={"B": "2"})
    assert client.envs() == {"HOME": str(agent.home), "A": "1", "B": "2"}


def test_init_rejects_a_body_that_is_not_json(agent: Agent) -> None:
    status, _, body = request(agent.url, "/init", b"{not json", {"Content-Type": "application/json"})
    assert status == 400
    assert json.loads(body)["code"] == 400


def test_binary_file_round_trips_and_parents_are_created(client: EnvdClient, tmp_path: Path) -> None:
    target = tmp_path / "new" / "dir" / "blob.bin"
    client.write_file(str(target), ALL_BYTES)
    assert target.read_bytes() == ALL_BYTES
    assert client.read_file(str(target)) == ALL_BYTES


def test_upload_replaces_an_existing_file(client: EnvdClient, tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_bytes(b"a much longer old content")
    client.write_file(str(target), b"new")
    assert target.read_bytes() == b"new"


def test_download_of_a_missing_file_is_404(client: EnvdClient, tmp_path: Path) -> None:
    with pytest.raises(EnvdError) as caught:
        client.read_file(str(tmp_path / "missing"))
    assert caught.value.code == "not_found"


def test_octet_stream_upload_answers_with_the_written_entry(agent: Agent) -> None:
    target = agent.home / "x.txt"
    status, _, body = request(
        agent.url, f"/files?path={target}", b"data", {"Content-Type": "application/octet-stream"}
    )
    assert status == 200
    assert json.loads(body) == [{"path": str(target), "name": "x.txt", "type": "file"}]
    assert target.read_bytes() == b"data"


def test_multipart_with_several_files_uses_each_filename_as_path(agent: Agent, tmp_path: Path) -> None:
    parts = b"".join(
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n\r\n%s\r\n'
        % (str(tmp_path / name).encode(), content)
        for name, content in (("one.txt", b"1"), ("two.bin", b"\x00\r\n2"))
    )
    status, _, body = request(agent.url, "/files", parts + b"--XyZ--\r\n",
                              {"Content-Type": "multipart/form-data; boundary=XyZ"})  # fmt: skip
    assert status == 200
    assert [entry["name"] for entry in json.loads(body)] == ["one.txt", "two.bin"]
    assert (tmp_path / "two.bin").read_bytes() == b"\x00\r\n2"


def test_metrics_report_memory_and_disk(agent: Agent) -> None:
    status, _, body = request(agent.url, "/metrics", method="GET")
    metrics = json.loads(body)
    assert status == 200
    assert metrics["mem_total"] > 0 and metrics["disk_total"] > 0 and metrics["cpu_count"] >= 1


def test_init_answers_with_the_envd_version_even_when_it_refuses(agent: Agent) -> None:
    status, headers, _ = request(agent.url, "/init", b"{}", {"Content-Type": "application/json"})
    assert (status, headers["X-Envd-Version"]) == (204, ENVD_VERSION)
    status, headers, _ = request(agent.url, "/init", b"[", {"Content-Type": "application/json"})
    assert (status, headers["X-Envd-Version"]) == (400, ENVD_VERSION)
    assert "X-Envd-Version" not in request(agent.url, "/health", method="GET")[1]


def test_client_metrics_parse_the_guest_figures(agent: Agent) -> None:
    agent.client().init(access_token=TOKEN)
    with pytest.raises(EnvdError) as caught:
        agent.client().metrics()
    assert caught.value.code == "unauthenticated"
    metrics = agent.client(access_token=TOKEN).metrics()
    assert metrics.cpu_count == os.cpu_count()
    assert 0 < metrics.mem_used < metrics.mem_total and 0 < metrics.disk_used <= metrics.disk_total
    assert abs(metrics.timestamp.timestamp() - time.time()) < 10


def test_metadata_headers_are_stored_as_user_e2b_xattrs(agent: Agent) -> None:
    target = agent.home / "m.txt"
    headers = {"Content-Type": "application/octet-stream", "X-Metadata-Owner-Team": "Core"}
    status, _, body = request(agent.url, f"/files?path={target}", b"data", headers)
    assert status == 200
    assert json.loads(body)[0]["metadata"] == {"owner-team": "Core"}
    assert os.getxattr(target, "user.e2b.owner-team") == b"Core"
    os.setxattr(target, "user.other", b"kept")
    status, _, body = request(
        agent.url, f"/files?path={target}", b"new", dict(headers, **{"X-Metadata-A": "1"})
    )
    assert json.loads(body)[0]["metadata"] == {"owner-team": "Core", "a": "1"}
    request(agent.url, f"/files?path={target}", b"new", {"Content-Type": "application/octet-stream"})
    assert os.listxattr(target) == ["user.other"]


def test_metadata_with_a_key_that_is_no_xattr_name_is_refused(agent: Agent) -> None:
    target = agent.home / "bad.txt"
    headers = {"Content-Type": "application/octet-stream", "X-Metadata-" + "k" * 300: "v"}
    status, _, body = request(agent.url, f"/files?path={target}", b"data", headers)
    assert (status, json.loads(body)["code"]) == (400, 400)
    assert "invalid metadata" in json.loads(body)["message"]
    assert not target.exists()


def test_downloads_are_gzipped_only_when_asked(agent: Agent) -> None:
    target = agent.home / "g.txt"
    target.write_bytes(b"gzip me " * 1000)
    status, headers, body = request(agent.url, f"/files?path={target}", method="GET")
    assert (status, headers.get("Content-Encoding"), body) == (200, None, target.read_bytes())
    status, headers, body = request(
        agent.url, f"/files?path={target}", method="GET", headers={"Accept-Encoding": "gzip, deflate, zstd"}
    )
    assert (status, headers["Content-Encoding"]) == (200, "gzip")
    assert gzip.decompress(body) == target.read_bytes()
    status, _, body = request(
        agent.url, f"/files?path={target}", method="GET", headers={"Accept-Encoding": "br, identity;q=0"}
    )
    assert (status, json.loads(body)["code"]) == (400, 400)

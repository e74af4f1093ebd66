"""``ember api``'s REST surface byte for byte: statuses, JSON error bodies, headers, v1 endpoints.

Raw HTTP (httpx), so what the SDK would crash on (a non-JSON error, a missing ``code``) is
seen directly, and the v1 endpoints older SDKs call are covered too.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from test_api_stub_orchestrator import ApiHarness, running_api, wait_until

from ember.api.errors import INVALID_SANDBOX_ID, TIMEOUT_NOT_POSITIVE
from ember.api.views import CLIENT_ID


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiHarness]:
    with running_api(tmp_path) as harness:
        yield harness


@pytest.fixture
def http(api: ApiHarness) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.api_url, headers=api.headers(), timeout=30) as client:
        yield client


def _is_error(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = answer.json()
    assert body["code"] == status and isinstance(body["message"], str)
    return body


def _create(http: httpx.Client, **body: Any) -> dict[str, Any]:
    answer = http.post("/v2/sandboxes", json={"templateID": "base", **body})
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b"", "empty"),
        (b'{"timeout": 10}', '"templateID" is required'),
        (b'{"templateID": 5}', '"templateID" must be a string'),
        (b'{"templateID": "base", "timeout": "ten"}', '"timeout" must be an integer'),
        (b'{"templateID": "base", "timeout": true}', '"timeout" must be an integer'),
        (b'{"templateID": "base", "metadata": {"a": 1}}', '"metadata" must be an object of strings'),
        (b'{"templateID": "base", "network": {"denyOut": ["example.com"]}}', "not an IP address or CIDR"),
        (b'{"templateID": "base", "autoResume": {}}', '"autoResume.enabled" is required'),
        (b'{"templateID": "base", "timeout": NaN}', "not JSON"),
    ],
)
def test_malformed_create_bodies_are_400_json(http: httpx.Client, body: bytes, needle: str) -> None:
    answer = http.post("/v2/sandboxes", content=body, headers={"Content-Type": "application/json"})
    assert needle in _is_error(answer, 400)["message"]


def test_create_rules_of_the_original(http: httpx.Client) -> None:
    assert _is_error(http.post("/v2/sandboxes", json={"templateID": "base", "timeout": 0}), 400)[
        "message"
    ] == (TIMEOUT_NOT_POSITIVE)
    assert (
        "autoPauseMemory"
        in _is_error(http.post("/v2/sandboxes", json={"templateID": "base", "autoPauseMemory": False}), 400)[
            "message"
        ]
    )
    both = {
        "templateID": "base",
        "autoPause": True,
        "autoPauseMemory": False,
        "autoResume": {"enabled": True},
    }
    _is_error(http.post("/v2/sandboxes", json=both), 400)
    _is_error(
        http.post("/sandboxes", json={"templateID": "base", "network": {"allowPublicTraffic": False}}), 400
    )
    assert (
        "not found" in _is_error(http.post("/v2/sandboxes", json={"templateID": "missing"}), 404)["message"]
    )
    _is_error(http.post("/v2/sandboxes", json={"templateID": "Bad Name!"}), 400)


def test_v1_create_defaults_to_15_s_and_secure_false_gives_no_envd_token(http: httpx.Client) -> None:
    created = http.post("/sandboxes", json={"templateID": "base"})
    assert created.status_code == 201
    body = created.json()
    assert "envdAccessToken" not in body and body["clientID"] == CLIENT_ID
    detail = http.get(f"/sandboxes/{body['sandboxID']}").json()
    assert 10 <= _seconds(detail["endAt"]) - _seconds(detail["startedAt"]) <= 15
    secure = http.post("/sandboxes", json={"templateID": "base", "secure": True}).json()
    assert len(secure["envdAccessToken"]) == 64


def test_v2_create_without_a_timeout_runs_for_300_s(http: httpx.Client) -> None:
    created = http.post("/v2/sandboxes", json={"templateID": "base"})
    assert created.status_code == 201
    detail = http.get(f"/sandboxes/{created.json()['sandboxID']}").json()
    assert 295 <= _seconds(detail["endAt"]) - _seconds(detail["startedAt"]) <= 300


def _seconds(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_v1_connect_needs_a_timeout_and_answers_200_when_running(http: httpx.Client) -> None:
    sandbox_id = _create(http)["sandboxID"]
    _is_error(http.post(f"/sandboxes/{sandbox_id}/connect", json={}), 400)
    assert http.post(f"/sandboxes/{sandbox_id}/connect", json={"timeout": 30}).status_code == 200
    assert http.post(f"/sandboxes/{sandbox_id}/pause").status_code == 204
    assert http.post(f"/sandboxes/{sandbox_id}/connect", json={"timeout": 30}).status_code == 201


def test_legacy_resume(http: httpx.Client) -> None:
    sandbox_id = _create(http)["sandboxID"]
    _is_error(http.post(f"/sandboxes/{sandbox_id}/resume", json={}), 409)
    http.post(f"/sandboxes/{sandbox_id}/pause")
    assert http.post(f"/sandboxes/{sandbox_id}/resume", json={"timeout": 60}).status_code == 201
    _is_error(http.post("/sandboxes/iaaaaaaaaaaaaaaaaaaaa/resume"), 404)


def test_path_ids_with_a_client_suffix_are_accepted_and_bad_ids_refused(http: httpx.Client) -> None:
    sandbox_id = _create(http)["sandboxID"]
    assert http.get(f"/sandboxes/{sandbox_id}-{CLIENT_ID}").json()["sandboxID"] == sandbox_id
    assert _is_error(http.get(f"/sandboxes/{sandbox_id}-a-b"), 400)["message"] == INVALID_SANDBOX_ID
    assert _is_error(http.get("/sandboxes/UPPER"), 400)["message"] == INVALID_SANDBOX_ID
    not_found = _is_error(http.get("/sandboxes/iaaaaaaaaaaaaaaaaaaaa"), 404)["message"]
    assert not_found == "Sandbox \"iaaaaaaaaaaaaaaaaaaaa\" doesn't exist or you don't have access to it"


def test_pause_answers(http: httpx.Client) -> None:
    sandbox_id = _create(http)["sandboxID"]
    assert http.post(f"/sandboxes/{sandbox_id}/pause", json={}).status_code == 204
    assert "already paused" in _is_error(http.post(f"/sandboxes/{sandbox_id}/pause"), 409)["message"]
    _is_error(http.post("/sandboxes/iaaaaaaaaaaaaaaaaaaaa/pause"), 404)
    detail = http.get(f"/sandboxes/{sandbox_id}").json()
    assert (detail["state"], detail["domain"], detail["pauseMode"]) == ("paused", None, "full")


def test_unknown_routes_wrong_methods_and_missing_keys_are_json(api: ApiHarness, http: httpx.Client) -> None:
    _is_error(http.get("/no/such/route"), 404)
    _is_error(http.put("/v2/sandboxes"), 405)
    _is_error(httpx.get(f"{api.api_url}/v2/sandboxes"), 401)
    assert httpx.get(f"{api.api_url}/health").status_code == 204


def test_timeout_refreshes_logs_and_metrics_endpoints(http: httpx.Client) -> None:
    sandbox_id = _create(http)["sandboxID"]
    _is_error(http.post(f"/sandboxes/{sandbox_id}/timeout", json={}), 400)
    assert http.post(f"/sandboxes/{sandbox_id}/timeout", json={"timeout": 100}).status_code == 204
    assert http.post(f"/sandboxes/{sandbox_id}/refreshes", json={"duration": 10}).status_code == 204
    _is_error(http.post(f"/sandboxes/{sandbox_id}/refreshes", json={"duration": 4000}), 400)
    assert http.get(f"/sandboxes/{sandbox_id}/logs").json() == {"logs": [], "logEntries": []}
    assert http.get(f"/v2/sandboxes/{sandbox_id}/logs").json() == {"logs": []}
    many = http.get("/sandboxes/metrics", params={"sandbox_ids": sandbox_id}).json()
    assert many["sandboxes"][sandbox_id]["cpuCount"] == 2
    metric = http.get(f"/sandboxes/{sandbox_id}/metrics").json()[0]
    assert set(metric) == {
        "timestamp", "timestampUnix", "cpuCount", "cpuUsedPct", "memUsed", "memTotal", "memCache", "diskUsed",
        "diskTotal",
    }  # fmt: skip


def test_list_v2_headers_cursor_and_refusals(http: httpx.Client) -> None:
    ids = [_create(http)["sandboxID"] for _ in range(3)]
    first = http.get("/v2/sandboxes", params={"limit": 2})
    assert first.headers["X-Total-Running"] == "3"
    token = first.headers["X-Next-Token"]
    stamp, _, last_id = base64.urlsafe_b64decode(token + "==").decode().partition("__")
    assert last_id == first.json()[-1]["sandboxID"] and stamp.endswith("Z")
    second = http.get("/v2/sandboxes", params={"limit": 2, "nextToken": token})
    assert "X-Next-Token" not in second.headers
    assert sorted(item["sandboxID"] for item in first.json() + second.json()) == sorted(ids)
    assert "X-Total-Running" not in http.get("/v2/sandboxes", params={"state": "paused"}).headers
    _is_error(http.get("/v2/sandboxes", params={"limit": 0}), 400)
    _is_error(http.get("/v2/sandboxes", params={"limit": 101}), 400)
    _is_error(http.get("/v2/sandboxes", params={"state": "gone"}), 400)
    _is_error(http.get("/v2/sandboxes", params={"template": "base:v1"}), 400)
    _is_error(http.get("/v2/sandboxes", params={"nextToken": "!!!"}), 400)
    _is_error(http.get("/v2/sandboxes", params={"order": "up"}), 400)
    assert len(http.get("/v2/sandboxes", params={"template": "base"}).json()) == 3
    assert http.get("/v2/sandboxes", params={"template": "other"}).json() == []


def test_list_v1_shows_running_sandboxes_newest_first(http: httpx.Client) -> None:
    ids = [_create(http, metadata={"n": str(n)})["sandboxID"] for n in range(3)]
    http.post(f"/sandboxes/{ids[0]}/pause")
    listed = http.get("/sandboxes").json()
    assert [item["sandboxID"] for item in listed] == [ids[2], ids[1]]
    assert [item["sandboxID"] for item in http.get("/sandboxes", params={"metadata": "n=1"}).json()] == [
        ids[1]
    ]


def test_idempotency_key_replays_the_first_create(api: ApiHarness, http: httpx.Client) -> None:
    body = {"templateID": "base", "metadata": {"try": "1"}}
    first = http.post("/v2/sandboxes", json=body, headers={"Idempotency-Key": "create-1"})
    again = http.post("/v2/sandboxes", json=body, headers={"Idempotency-Key": "create-1"})
    assert first.status_code == again.status_code == 201
    assert first.json()["sandboxID"] == again.json()["sandboxID"]
    assert len(api.cluster.creates()) == 1
    other = http.post("/v2/sandboxes", json={"templateID": "base"}, headers={"Idempotency-Key": "create-1"})
    assert _is_error(other, 409)["error_code"] == "idempotency_request_mismatch"
    _is_error(http.post("/v2/sandboxes", json=body, headers={"Idempotency-Key": "Bad Key"}), 400)


def test_placement_failures_map_to_the_originals_statuses(api: ApiHarness, http: httpx.Client) -> None:
    node = api.cluster.nodes[0]
    node.refuse_creates = grpc.StatusCode.RESOURCE_EXHAUSTED
    full = _is_error(
        http.post("/v2/sandboxes", json={"templateID": "base"}, headers={"Should-Retry": "false"}), 503
    )
    assert full["error_code"] == "sandbox_capacity_unavailable"
    assert full["message"].startswith("Failed to place sandbox")
    node.refuse_creates = grpc.StatusCode.FAILED_PRECONDITION
    failed = _is_error(http.post("/v2/sandboxes", json={"templateID": "base"}), 500)
    assert failed["error_code"] == "sandbox_create_failed"
    assert failed["message"] == "Failed to place sandbox: the stub refuses creates"
    node.refuse_creates = grpc.StatusCode.INTERNAL
    assert _is_error(http.post("/v2/sandboxes", json={"templateID": "base"}), 500)["message"] == (
        "Failed to place sandbox: the node failed to start it"
    )


def test_template_endpoints(http: httpx.Client) -> None:
    assert http.get("/templates/aliases/base").json()["public"] is False
    _is_error(http.get("/templates/aliases/none"), 404)
    page = http.get("/v2/templates", params={"limit": 1})
    assert [item["aliases"] for item in page.json()] == [["base"]]
    _is_error(http.get("/templates/nothing"), 404)
    _is_error(http.delete("/templates/nothing"), 404)


def test_a_pause_the_node_refuses_leaves_the_sandbox_running(api: ApiHarness, http: httpx.Client) -> None:
    api.cluster.nodes[0].refuse_filesystem_only = True
    sandbox_id = _create(http)["sandboxID"]
    refused = _is_error(http.post(f"/sandboxes/{sandbox_id}/pause", json={"memory": False}), 400)
    assert "filesystem-only" in refused["message"]
    assert http.get(f"/sandboxes/{sandbox_id}").json()["state"] == "running"
    assert [item["state"] for item in http.get("/v2/sandboxes").json()] == ["running"]
    assert http.post(f"/sandboxes/{sandbox_id}/pause").status_code == 204  # and a real pause still works


def test_an_auto_pause_the_node_refuses_ends_in_a_kill(api: ApiHarness, http: httpx.Client) -> None:
    api.cluster.nodes[0].refuse_filesystem_only = True
    sandbox_id = _create(http, timeout=1, autoPause=True, autoPauseMemory=False)["sandboxID"]
    wait_until(lambda: sandbox_id not in api.cluster.running(), what="the evictor")
    node = api.cluster.nodes[0]
    assert [pause.filesystem_only for pause in node.pauses] == [True]
    assert node.deletes[-1].sandbox_id == sandbox_id
    _is_error(http.get(f"/sandboxes/{sandbox_id}"), 404)


def test_a_filesystem_only_snapshot_resumes_with_a_filesystem_boot(
    api: ApiHarness, http: httpx.Client
) -> None:
    node = api.cluster.nodes[0]
    sandbox_id = _create(http)["sandboxID"]
    assert http.post(f"/sandboxes/{sandbox_id}/pause", json={"memory": False}).status_code == 204
    assert [pause.filesystem_only for pause in node.pauses] == [True]
    assert http.get(f"/sandboxes/{sandbox_id}").json()["pauseMode"] == "filesystem"
    assert http.post(f"/v2/sandboxes/{sandbox_id}/connect", json={}).status_code == 201
    resumed = node.creates[-1]
    assert resumed.sandbox.sandbox_id == sandbox_id and resumed.filesystem_boot
    assert resumed.sandbox.build_id == node.pauses[-1].build_id

    assert http.post(f"/sandboxes/{sandbox_id}/pause").status_code == 204
    assert http.post(f"/sandboxes/{sandbox_id}/resume", json={}).status_code == 201
    assert not node.creates[-1].filesystem_boot, "a pause with memory resumes from memory again"


def test_resumes_go_back_to_the_origin_node(tmp_path: Path) -> None:
    with (
        running_api(tmp_path, nodes=3) as api,
        httpx.Client(base_url=api.api_url, headers=api.headers()) as http,
    ):
        for _ in range(4):
            sandbox_id = _create(http)["sandboxID"]
            origin = next(node for node in api.cluster.nodes if sandbox_id in node.running())
            http.post(f"/sandboxes/{sandbox_id}/pause")
            assert http.post(f"/v2/sandboxes/{sandbox_id}/connect", json={}).status_code == 201
            assert sandbox_id in origin.running()
        api.cluster.nodes[0].refuse_creates = grpc.StatusCode.RESOURCE_EXHAUSTED
        api.cluster.nodes[1].refuse_creates = grpc.StatusCode.RESOURCE_EXHAUSTED
        for _ in range(3):
            placed = _create(http)["sandboxID"]
            assert placed in api.cluster.nodes[2].running()

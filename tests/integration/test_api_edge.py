"""The edge proxy and auto-resume: sandbox traffic through ``ember api`` to the stub nodes' proxies.

Requests go to the edge as the SDK sends them with ``E2B_SANDBOX_URL`` (header routing on an
IP Host) and as a browser would (Host ``{port}-{id}.{domain}``); the stub nodes run the real
node proxy, so what reaches the stand-in VM is what a real VM would see.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from test_api_stub_orchestrator import APP_PORT, DOMAIN, ApiHarness, running_api, ws_roundtrip

from ember.api.resume import ENVD_TOKEN_METADATA, PORT_METADATA
from ember.rpc import proxy_pb2, proxy_pb2_grpc
from ember.traffic.routing import ENVD_PORT, INVALID_HOST, SANDBOX_NOT_FOUND_MESSAGE

e2b = pytest.importorskip("e2b", reason="the e2b SDK is a test extra: pip install -e '.[test]'")


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiHarness]:
    with running_api(tmp_path) as harness:
        harness.sdk_env(monkeypatch)
        yield harness


def _by_headers(sandbox_id: str, port: int = APP_PORT, **extra: str) -> dict[str, str]:
    return {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(port), **extra}


def test_header_routed_requests_reach_the_vm_with_the_sandbox_host(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create()
    answer = httpx.post(f"{api.edge_url}/echo?x=1", headers=_by_headers(sandbox.sandbox_id), content=b"hello")
    assert answer.status_code == 200
    seen = answer.json()
    assert seen["sandbox"] == sandbox.sandbox_id
    assert seen["host"] == f"{APP_PORT}-{sandbox.sandbox_id}.{DOMAIN}"
    assert seen["headers"]["X-Forwarded-Host"] == api.edge_url.removeprefix("http://")
    assert (seen["path"], seen["body"]) == ("/echo?x=1", "hello")


def test_host_routed_requests_keep_their_host(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create()
    host = f"{APP_PORT}-{sandbox.sandbox_id}.{DOMAIN}"
    seen = httpx.get(f"{api.edge_url}/page", headers={"Host": host}).json()
    assert seen["host"] == host
    assert "X-Forwarded-Host" not in seen["headers"]


def test_a_streamed_response_arrives_chunk_by_chunk(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create()
    vm = api.cluster.nodes[0].vm
    with httpx.stream(
        "GET", f"{api.edge_url}/stream", headers=_by_headers(sandbox.sandbox_id), timeout=30
    ) as answer:
        chunks = answer.iter_bytes()
        first = next(chunks)
        vm.stream_release.set()  # the VM sends its second chunk only now
        rest = b"".join(chunks)
    assert first == b"data: first\n\n"
    assert rest == b"data: second\n\n"


def test_a_websocket_is_relayed(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create()
    url = api.edge_url.replace("http://", "ws://") + "/ws"
    assert ws_roundtrip(url, _by_headers(sandbox.sandbox_id), "ping") == "echo:ping"


def test_a_signed_files_url_reaches_the_sandbox_that_signed_it_with_nothing_else_naming_it(
    api: ApiHarness,
) -> None:
    """The SDK's download_url/upload_url with E2B_SANDBOX_URL: the edge, no sandbox header."""
    sandbox, other = e2b.Sandbox.create(secure=True), e2b.Sandbox.create(secure=True)
    for target in (sandbox, other):
        url = target.download_url("/tmp/report.txt", use_signature_expiration=60)
        assert url.startswith(api.edge_url + "/files?"), url
        seen = httpx.get(url).json()
        assert (seen["sandbox"], seen["method"]) == (target.sandbox_id, "GET"), seen
        assert seen["path"] == url.removeprefix(api.edge_url)
    upload = sandbox.upload_url("/tmp/in.bin")
    seen = httpx.post(upload, content=b"bytes").json()
    assert (seen["sandbox"], seen["body"]) == (sandbox.sandbox_id, "bytes")

    # a signature no running sandbox's token makes, or a read signature used to write: no sandbox
    forged = url.split("&signature=")[0] + "&signature=v1_" + "A" * 43
    for method, target_url in (("GET", forged), ("POST", url)):
        answer = httpx.request(method, target_url)
        assert (answer.status_code, answer.json()["code"]) == (400, 400), answer.text
    other.kill()
    assert httpx.get(other.download_url("/tmp/report.txt")).status_code == 400


def test_unroutable_and_unknown_sandboxes_get_the_originals_json(api: ApiHarness) -> None:
    answer = httpx.get(f"{api.edge_url}/", headers={"Host": "nodots"})
    assert (answer.status_code, answer.json()) == (400, {"code": 400, "message": INVALID_HOST})
    answer = httpx.get(f"{api.edge_url}/", headers=_by_headers("iunknown00000000000000"))
    assert answer.status_code == 502
    assert answer.json()["message"] == SANDBOX_NOT_FOUND_MESSAGE
    assert httpx.get(f"{api.edge_url}/health").json() == {"status": "healthy"}


def test_a_killed_sandbox_is_not_running_for_the_sdk(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create()
    assert sandbox.is_running()
    sandbox.kill()
    assert sandbox.is_running() is False  # the edge's 502


def test_traffic_to_a_paused_auto_resume_sandbox_resumes_it(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create(timeout=120, lifecycle={"on_timeout": "pause", "auto_resume": True})
    sandbox.pause()
    assert sandbox.sandbox_id not in api.cluster.running()
    answer = httpx.get(f"{api.edge_url}/after-resume", headers=_by_headers(sandbox.sandbox_id), timeout=30)
    assert answer.status_code == 200
    assert answer.json()["path"] == "/after-resume"
    resume = api.cluster.creates()[-1]
    assert resume.sandbox.snapshot is True and not resume.filesystem_boot
    assert resume.end_time.seconds - resume.start_time.seconds >= 300  # auto-resume's minimum timeout
    assert sandbox.get_info().state.value == "running"


def test_auto_resume_checks_the_envd_token_on_envds_port(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create(lifecycle={"on_timeout": "pause", "auto_resume": True})
    sandbox.pause()
    refused = httpx.get(f"{api.edge_url}/health", headers=_by_headers(sandbox.sandbox_id, ENVD_PORT))
    assert refused.status_code == 403
    assert sandbox.sandbox_id not in api.cluster.running()
    assert sandbox.is_running()  # the SDK sends its X-Access-Token: the resume is allowed
    assert sandbox.sandbox_id in api.cluster.running()


def test_private_ingress_needs_the_traffic_token_to_auto_resume(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create(
        network={"allow_public_traffic": False}, lifecycle={"on_timeout": "pause", "auto_resume": True}
    )
    token = sandbox.traffic_access_token
    assert token
    sandbox.pause()
    assert httpx.get(f"{api.edge_url}/", headers=_by_headers(sandbox.sandbox_id)).status_code == 403
    allowed = httpx.get(
        f"{api.edge_url}/", headers=_by_headers(sandbox.sandbox_id, **{"e2b-traffic-access-token": token})
    )
    assert allowed.status_code == 200
    # running now: the node proxy checks the token itself
    assert httpx.get(f"{api.edge_url}/", headers=_by_headers(sandbox.sandbox_id)).status_code == 403


def test_a_paused_sandbox_without_auto_resume_is_not_found(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create()
    sandbox.pause()
    answer = httpx.get(f"{api.edge_url}/", headers=_by_headers(sandbox.sandbox_id))
    assert answer.status_code == 502
    assert sandbox.sandbox_id not in api.cluster.running()


def test_the_internal_grpc_resumes_for_an_edge_in_another_process(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create(lifecycle={"on_timeout": "pause", "auto_resume": True})
    sandbox.pause()
    with grpc.insecure_channel(api.grpc_target) as channel:
        stub = proxy_pb2_grpc.SandboxServiceStub(channel)
        request = proxy_pb2.SandboxResumeRequest(sandbox_id=sandbox.sandbox_id)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ResumeSandbox(request, metadata=[(PORT_METADATA, str(ENVD_PORT))])
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        answer = stub.ResumeSandbox(
            request,
            metadata=[(PORT_METADATA, str(ENVD_PORT)), (ENVD_TOKEN_METADATA, sandbox._envd_access_token)],
        )
        assert answer.orchestrator_ip == api.cluster.nodes[0].host
        with pytest.raises(grpc.RpcError) as caught:
            stub.ResumeSandbox(proxy_pb2.SandboxResumeRequest(sandbox_id="inothere00000000000000"))
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert sandbox.sandbox_id in api.cluster.running()
    assert sandbox.get_info().state.value == "running"


def test_auto_resume_past_the_team_limit_is_429(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_api(tmp_path, limits=(1, None)) as api:
        api.sdk_env(monkeypatch)
        paused = e2b.Sandbox.create(lifecycle={"on_timeout": "pause", "auto_resume": True})
        paused.pause()
        e2b.Sandbox.create()  # takes the team's only slot
        answer = httpx.get(f"{api.edge_url}/", headers=_by_headers(paused.sandbox_id))
        assert answer.status_code == 429
        assert "maximum number of concurrent E2B sandboxes (1)" in answer.json()["message"]

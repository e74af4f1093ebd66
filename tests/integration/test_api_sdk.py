"""E2B's Python SDK, unchanged, against ``ember api`` over a stub orchestrator.

The SDK is pointed at the API as a user points it (``E2B_API_URL``, ``E2B_SANDBOX_URL``,
``E2B_API_KEY``, ``E2B_DOMAIN``); what the stub nodes received is checked beside what the SDK
returns. No VM boots: see ``test_api_stub_orchestrator`` for the stub.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_api_stub_orchestrator import BASE_BUILD, ApiHarness, running_api, wait_until

from ember.api.errors import CONCURRENCY_LIMIT, INVALID_API_KEY

e2b = pytest.importorskip("e2b", reason="the e2b SDK is a test extra: pip install -e '.[test]'")


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiHarness]:
    with running_api(tmp_path) as harness:
        harness.sdk_env(monkeypatch)
        yield harness


def _states(**query: object) -> dict[str, str]:
    paginator = e2b.Sandbox.list(**query)
    found: dict[str, str] = {}
    while paginator.has_next:
        for info in paginator.next_items():
            found[info.sandbox_id] = str(info.state.value)
    return found


def test_create_answers_201_with_tokens_and_the_stub_gets_the_config(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create(metadata={"team": "a"}, envs={"A": "1"}, timeout=120)
    assert sandbox.sandbox_id.startswith("i") and len(sandbox.sandbox_id) == 21
    assert sandbox._envd_access_token  # v2 sandboxes are always secured
    assert sandbox.traffic_access_token is None
    (create,) = api.cluster.creates()
    config = create.sandbox
    assert config.sandbox_id == sandbox.sandbox_id
    assert config.build_id == BASE_BUILD
    assert config.snapshot is False
    assert dict(config.env_vars) == {"A": "1"}
    assert dict(config.metadata) == {"team": "a"}
    assert config.envd_access_token == sandbox._envd_access_token
    assert (config.vcpu, config.ram_mb, config.total_disk_size_mb) == (2, 512, 1024)
    assert sandbox.is_running()


def test_get_info_describes_the_running_sandbox(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create(metadata={"k": "v"}, timeout=60)
    info = sandbox.get_info()
    assert info.sandbox_id == sandbox.sandbox_id
    assert info.state.value == "running"
    assert info.metadata == {"k": "v"}
    assert (info.cpu_count, info.memory_mb) == (2, 512)
    assert info.name == "base"
    assert info.lifecycle == {"on_timeout": "kill", "auto_resume": False}
    assert dt.timedelta(seconds=50) < info.end_at - info.started_at <= dt.timedelta(seconds=60)


def test_list_filters_by_metadata_and_state(api: ApiHarness) -> None:
    red = e2b.Sandbox.create(metadata={"color": "red", "note": "a b&c=d"})
    blue = e2b.Sandbox.create(metadata={"color": "blue"})
    assert _states(query=e2b.SandboxQuery(metadata={"color": "red"})) == {red.sandbox_id: "running"}
    assert _states(query=e2b.SandboxQuery(metadata={"note": "a b&c=d"})) == {red.sandbox_id: "running"}
    blue.pause()
    assert _states() == {red.sandbox_id: "running", blue.sandbox_id: "paused"}
    paused_only = e2b.SandboxQuery(state=[e2b.SandboxState.PAUSED])
    assert _states(query=paused_only) == {blue.sandbox_id: "paused"}


def test_list_pages_through_more_than_one_page_in_order(api: ApiHarness) -> None:
    created = [e2b.Sandbox.create().sandbox_id for _ in range(5)]
    e2b.Sandbox.kill(created[1])
    e2b.Sandbox.connect(created[2]).pause()
    paginator = e2b.Sandbox.list(limit=2, order="asc")
    pages = []
    while paginator.has_next:
        pages.append([info.sandbox_id for info in paginator.next_items()])
    assert [len(page) for page in pages] == [2, 2]
    assert [sandbox_id for page in pages for sandbox_id in page] == [created[0], *created[2:]]


def test_set_timeout_moves_the_end_time(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create(timeout=60)
    sandbox.set_timeout(600)
    info = sandbox.get_info()
    assert info.end_at - dt.datetime.now(dt.UTC) > dt.timedelta(seconds=500)
    sandbox.set_timeout(30)
    assert sandbox.get_info().end_at - dt.datetime.now(dt.UTC) < dt.timedelta(seconds=31)
    assert api.cluster.nodes[0].updates[-1].HasField("end_time")


def test_connect_extends_a_running_sandbox_but_never_shortens_it(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create(timeout=600)
    end = sandbox.get_info().end_at
    e2b.Sandbox.connect(sandbox.sandbox_id, timeout=30)
    assert sandbox.get_info().end_at == end
    e2b.Sandbox.connect(sandbox.sandbox_id, timeout=1200)
    assert sandbox.get_info().end_at > end


def test_kill_removes_the_sandbox(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create()
    assert sandbox.kill() is True
    assert _states() == {}
    with pytest.raises(e2b.NotFoundException):
        sandbox.get_info()
    assert e2b.Sandbox.kill(sandbox.sandbox_id) is False
    assert sandbox.sandbox_id not in api.cluster.running()


def test_pause_then_pause_again_then_connect_resumes_on_the_origin_node(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create(metadata={"keep": "me"})
    assert sandbox.pause() is True
    (pause,) = api.cluster.nodes[0].pauses
    assert pause.sandbox_id == sandbox.sandbox_id
    assert _states() == {sandbox.sandbox_id: "paused"}
    info = sandbox.get_info()
    assert info.state.value == "paused" and info.metadata == {"keep": "me"}
    assert sandbox.pause() is False  # 409: already paused
    resumed = e2b.Sandbox.connect(sandbox.sandbox_id, timeout=120)
    assert resumed.sandbox_id == sandbox.sandbox_id
    assert resumed._envd_access_token == sandbox._envd_access_token  # derived again, the same
    resume = api.cluster.creates()[-1].sandbox
    assert resume.snapshot is True
    assert resume.build_id == pause.build_id
    assert resume.template_id == pause.template_id
    assert not resume.env_vars
    assert _states() == {sandbox.sandbox_id: "running"}
    assert e2b.Sandbox.connect(sandbox.sandbox_id).sandbox_id == sandbox.sandbox_id  # running: 200


def test_kill_of_a_paused_sandbox_deletes_its_snapshot(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create()
    sandbox.pause()
    assert e2b.Sandbox.kill(sandbox.sandbox_id) is True
    assert _states() == {}
    with pytest.raises(e2b.NotFoundException):
        e2b.Sandbox.connect(sandbox.sandbox_id)


def test_a_wrong_api_key_is_refused(api: ApiHarness) -> None:
    with pytest.raises(e2b.AuthenticationException):
        e2b.Sandbox.create(api_key="e2b_0000000000000000000000000000000000000000")
    answer = httpx.get(f"{api.api_url}/v2/sandboxes", headers={"X-API-Key": "e2b_nope"})
    assert answer.status_code == 401
    assert answer.json() == {"code": 401, "message": INVALID_API_KEY}


def test_unknown_sandboxes_raise_the_sdks_not_found(api: ApiHarness) -> None:
    with pytest.raises(e2b.NotFoundException):
        e2b.Sandbox.get_info("iaaaaaaaaaaaaaaaaaaaa")
    with pytest.raises(e2b.NotFoundException):
        e2b.Sandbox.connect("iaaaaaaaaaaaaaaaaaaaa")
    with pytest.raises(e2b.NotFoundException):
        e2b.Sandbox.set_timeout("iaaaaaaaaaaaaaaaaaaaa", 10)
    assert e2b.Sandbox.kill("iaaaaaaaaaaaaaaaaaaaa") is False


def test_metrics_come_from_envd_through_the_node_proxy(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create()
    (metric,) = sandbox.get_metrics()
    assert (metric.cpu_count, metric.cpu_used_pct) == (2, 12.5)
    assert metric.mem_total == 512 << 20
    api.cluster.nodes[0].vm.metrics_enabled = False
    assert sandbox.get_metrics() == []


def test_fork_starts_count_children_from_one_checkpoint(api: ApiHarness) -> None:
    parent = e2b.Sandbox.create(metadata={"role": "parent"})
    children = parent.fork(count=3, timeout=60)
    assert len(children) == 3
    node = api.cluster.nodes[0]
    (checkpoint,) = node.checkpoints
    assert checkpoint.sandbox_id == parent.sandbox_id
    child_creates = api.cluster.creates()[1:]
    assert {create.sandbox.build_id for create in child_creates} == {checkpoint.build_id}
    assert all(create.sandbox.snapshot for create in child_creates)
    assert {child.sandbox_id for child in children} == {c.sandbox.sandbox_id for c in child_creates}
    assert parent.sandbox_id in api.cluster.running()  # the parent keeps running
    assert len(_states(query=e2b.SandboxQuery(metadata={"role": "parent"}))) == 4


def test_snapshots_are_created_listed_used_and_deleted(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create()
    snapshot = sandbox.create_snapshot(name="my-snap")
    assert snapshot.names == ["my-snap"]
    (checkpoint,) = api.cluster.nodes[0].checkpoints
    paginator = e2b.Sandbox.list_snapshots()
    assert [item.snapshot_id for item in paginator.next_items()] == [snapshot.snapshot_id]
    child = e2b.Sandbox.create("my-snap")
    assert api.cluster.creates()[-1].sandbox.build_id == checkpoint.build_id
    assert child.get_info().template_id == snapshot.snapshot_id
    assert e2b.Sandbox.delete_snapshot(snapshot.snapshot_id) is True
    assert e2b.Sandbox.delete_snapshot(snapshot.snapshot_id) is False


def test_update_network_sends_the_new_egress_to_the_node(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create()
    sandbox.update_network({"deny_out": ["10.0.0.0/8"]})
    update = api.cluster.nodes[0].updates[-1]
    assert list(update.egress.denied_cidrs) == ["10.0.0.0/8"]
    assert sandbox.get_info().network == {"deny_out": ["10.0.0.0/8"]}


def test_the_concurrency_limit_answers_429_with_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_api(tmp_path, limits=(2, None)) as api:
        api.sdk_env(monkeypatch)
        e2b.Sandbox.create()
        e2b.Sandbox.create()
        with pytest.raises(e2b.RateLimitException):
            e2b.Sandbox.create(retries=0)
        answer = httpx.post(f"{api.api_url}/v2/sandboxes", json={"templateID": "base"}, headers=api.headers())
        assert answer.status_code == 429
        assert answer.headers["Retry-After"].isdigit()
        assert answer.json() == {"code": 429, "message": CONCURRENCY_LIMIT.format(limit=2)}


def test_a_timeout_longer_than_the_team_allows_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_api(tmp_path, limits=(None, 1)) as api:
        api.sdk_env(monkeypatch)
        with pytest.raises(e2b.SandboxException) as caught:
            e2b.Sandbox.create(timeout=3601)
        assert "400" in str(caught.value)
        assert api.cluster.creates() == []


def test_the_evictor_kills_at_the_end_time(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create(timeout=1)
    wait_until(lambda: sandbox.sandbox_id not in api.cluster.running(), what="the evictor's kill")
    assert api.cluster.nodes[0].deletes[-1].kill_reason == "timeout"
    assert _states() == {}


def test_the_evictor_pauses_sandboxes_created_with_auto_pause(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create(timeout=1, lifecycle={"on_timeout": "pause"})
    wait_until(lambda: api.cluster.nodes[0].pauses, what="the evictor's pause")
    assert [pause.sandbox_id for pause in api.cluster.nodes[0].pauses] == [sandbox.sandbox_id]
    wait_until(lambda: sandbox.sandbox_id not in api.cluster.running(), what="the pause to end")
    assert _states() == {sandbox.sandbox_id: "paused"}
    assert sandbox.get_info().lifecycle == {"on_timeout": "pause", "auto_resume": False}


def test_a_restarted_api_keeps_paused_and_running_sandboxes(api: ApiHarness) -> None:
    paused = e2b.Sandbox.create(metadata={"which": "paused"})
    paused.pause()
    running = e2b.Sandbox.create(metadata={"which": "running"})
    api.cluster.nodes[0].adopt("iorphan000000000000000")
    api.restart()
    assert _states() == {paused.sandbox_id: "paused", running.sandbox_id: "running"}
    assert "iorphan000000000000000" not in api.cluster.running()  # killed as an orphan
    e2b.Sandbox.connect(paused.sandbox_id)
    assert api.cluster.creates()[-1].sandbox.snapshot is True
    assert _states() == {paused.sandbox_id: "running", running.sandbox_id: "running"}


def test_a_sandbox_that_ended_on_its_node_is_dropped_at_the_next_sync(api: ApiHarness) -> None:
    sandbox = e2b.Sandbox.create()
    with api.cluster.nodes[0].lock:
        api.cluster.nodes[0].sandboxes.clear()
    assert api.server is not None and api.server.sync is not None
    api.on_api_loop(api.server.sync.sync())
    assert _states() == {}
    with pytest.raises(e2b.NotFoundException):
        sandbox.get_info()


def test_templates_are_listed_and_found_by_alias(api: ApiHarness) -> None:
    assert e2b.Template.exists("base") is True
    assert e2b.Template.exists("nothing-here") is False
    templates = httpx.get(f"{api.api_url}/templates", headers=api.headers()).json()
    assert [template["aliases"] for template in templates] == [["base"]]
    assert templates[0]["buildID"] == BASE_BUILD and templates[0]["buildStatus"] == "ready"
    detail = httpx.get(f"{api.api_url}/templates/base", headers=api.headers()).json()
    assert [build["buildID"] for build in detail["builds"]] == [BASE_BUILD]

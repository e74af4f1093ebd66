"""Template builds through ``ember api``: E2B's SDK unchanged (``Template.build``, ``exists``,
``Sandbox.create("my-tpl")``) over the stub nodes' scripted ``TemplateService``, the raw
endpoints and their codes, tags, restarts, and gc behind deletes over a real LocalStorage.
"""

from __future__ import annotations

import io
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from test_api_stub_orchestrator import BASE_BUILD, ApiHarness, running_api, wait_until

from ember.api.records import BuildStatus
from ember.build.gc.synthetic import write_synthetic_build
from ember.header import Header
from ember.storage import LocalStorage

e2b = pytest.importorskip("e2b", reason="the e2b SDK is a test extra: pip install -e '.[test]'")


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiHarness]:
    with running_api(tmp_path) as harness:
        harness.sdk_env(monkeypatch)
        yield harness


@pytest.fixture
def context_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "context"
    directory.mkdir()
    (directory / "a.txt").write_text("hello from a.txt\n")
    return directory


def _http(api: ApiHarness) -> httpx.Client:
    return httpx.Client(base_url=api.api_url, headers=api.headers(), timeout=30)


def _error(answer: httpx.Response, status: int) -> dict[str, Any]:
    """Every refusal is JSON ``{code, message}`` with the HTTP status as ``code``."""
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    assert body["code"] == status and isinstance(body["message"], str)
    return body


def _simple(context: Path | None = None) -> Any:
    template = e2b.Template(file_context_path=context) if context else e2b.Template()
    return template.from_template("base").run_cmd("echo hi").set_start_cmd("sleep infinity", "sleep 1")


def _team_id(api: ApiHarness) -> str:
    assert api.server is not None and api.server.store is not None
    team = api.on_api_loop(api.server.store.default_team())
    return team.id


# -- the SDK's build flow ------------------------------------------------------------------------------


def test_the_sdk_builds_a_template_with_a_copy_and_streams_its_logs(
    api: ApiHarness, context_dir: Path
) -> None:
    template = (
        e2b.Template(file_context_path=context_dir)
        .from_template("base")
        .copy("a.txt", "/tmp/a.txt")
        .run_cmd("echo hi")
        .set_start_cmd("sleep infinity", "sleep 1")
    )
    logs: list[Any] = []
    info = e2b.Template.build(template, "my-tpl", cpu_count=2, memory_mb=1024, on_build_logs=logs.append)
    assert info.name == "my-tpl" and info.tags == ["default"]

    node = api.cluster.nodes[0]
    (create,) = api.cluster.template_creates()
    config = create.template
    team_id = _team_id(api)
    assert (config.templateID, config.buildID) == (info.template_id, info.build_id)
    assert config.WhichOneof("source") == "fromTemplate"
    assert (config.fromTemplate.alias, config.fromTemplate.buildID) == ("base", BASE_BUILD)
    assert [step.type for step in config.steps] == ["COPY", "RUN"]
    assert list(config.steps[1].args) == ["echo hi"]
    assert (config.startCommand, config.readyCommand) == ("sleep infinity", "sleep 1")
    # 1024 MiB asked, but a build from base resumes base's snapshot: it has base's 512 MiB
    assert (config.vCpuCount, config.memoryMB, config.teamID) == (2, 512, team_id)
    assert create.cacheScope == team_id  # the same scope as the upload: the node finds the files

    # the SDK PUT the COPY step's tar to the node's own upload endpoint
    ((scope, files_hash), tar) = next(iter(node.templates.uploads.items()))
    assert (scope, files_hash) == (team_id, config.steps[0].filesHash)
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:*") as archive:
        member = archive.extractfile("a.txt")
        assert member is not None and member.read() == b"hello from a.txt\n"

    messages = [entry.message for entry in logs]
    assert "RUN echo hi" in messages and "hi" in messages
    assert f"template build {info.build_id} is ready" in messages
    assert messages.index("RUN echo hi") < messages.index("hi")
    assert len(messages) == len(set(messages))  # every node entry streamed exactly once

    assert e2b.Template.exists("my-tpl") is True
    assert e2b.Template.exists("not-my-tpl") is False
    sandbox = e2b.Sandbox.create("my-tpl")
    started = api.cluster.creates()[-1].sandbox
    assert started.sandbox_id == sandbox.sandbox_id
    assert started.build_id == info.build_id and started.template_id == info.template_id
    assert (started.envd_version, started.kernel_version) == ("0.6.4", "vmlinux-6.1.158")
    assert (started.vcpu, started.ram_mb, started.total_disk_size_mb) == (2, 512, 2048)
    assert sandbox.get_info().name == "my-tpl"

    with _http(api) as http:
        detail = http.get(f"/templates/{info.template_id}").json()
        assert (detail["buildID"], detail["buildStatus"], detail["envdVersion"]) == (
            info.build_id,
            "ready",
            "0.6.4",
        )
        assert [build["status"] for build in detail["builds"]] == ["ready"]
        tags = http.get("/templates/my-tpl/tags").json()
        assert [(tag["tag"], tag["buildID"]) for tag in tags] == [("default", info.build_id)]


def test_a_second_build_replaces_the_current_one_and_cached_files_are_not_uploaded_again(
    api: ApiHarness, context_dir: Path
) -> None:
    def template() -> Any:
        return e2b.Template(file_context_path=context_dir).from_template("base").copy("a.txt", "/tmp/")

    first = e2b.Template.build(template(), "again")
    logs: list[Any] = []
    second = e2b.Template.build(template(), "again", on_build_logs=logs.append)
    assert second.template_id == first.template_id and second.build_id != first.build_id
    assert "Skipping upload of 'a.txt', already cached" in [entry.message for entry in logs]
    assert len(api.cluster.nodes[0].templates.uploads) == 1
    e2b.Sandbox.create("again")
    assert api.cluster.creates()[-1].sandbox.build_id == second.build_id


def test_a_failing_step_raises_build_exception_naming_the_step(api: ApiHarness) -> None:
    template = e2b.Template().from_template("base").run_cmd("echo ok").run_cmd("false")
    logs: list[Any] = []
    with pytest.raises(e2b.BuildException) as caught:
        e2b.Template.build(template, "broken", on_build_logs=logs.append)
    assert "step 2 RUN 'false' exited with code 1" in str(caught.value)
    assert any(entry.level == "error" and "exited with code 1" in entry.message for entry in logs)

    assert e2b.Template.exists("broken") is True  # the template is there, without a ready build
    with pytest.raises(e2b.SandboxException) as refused:
        e2b.Sandbox.create("broken")
    assert "400" in str(refused.value) and "failed" in str(refused.value)
    with _http(api) as http:
        template_id = http.get("/templates/aliases/broken").json()["templateID"]
        (build,) = http.get(f"/templates/{template_id}").json()["builds"]
        status = http.get(f"/templates/{template_id}/builds/{build['buildID']}/status").json()
        assert status["status"] == "error"
        assert status["reason"]["step"] == "2" and "exited with code 1" in status["reason"]["message"]


def test_a_copy_whose_files_never_arrived_fails_at_its_step(api: ApiHarness, context_dir: Path) -> None:
    with _http(api) as http:
        started = http.post("/v3/templates", json={"name": "no-files"}).json()
        steps = [{"type": "COPY", "args": ["a.txt", "/tmp/"], "filesHash": "a" * 64, "force": False}]
        answer = http.post(
            f"/v2/templates/{started['templateID']}/builds/{started['buildID']}",
            json={"fromTemplate": "base", "steps": steps},
        )
        assert answer.status_code == 202 and answer.content == b""
        url = f"/templates/{started['templateID']}/builds/{started['buildID']}/status"
        final = wait_until(lambda: (body := http.get(url).json())["status"] == "error" and body, what="error")
        assert final["reason"]["step"] == "1" and "never uploaded" in final["reason"]["message"]


# -- the raw endpoints ----------------------------------------------------------------------------------


def test_the_build_endpoints_answer_the_documented_codes_and_shapes(api: ApiHarness) -> None:
    with _http(api) as http:
        requested = http.post("/v3/templates", json={"name": "raw:v1", "tags": ["Stable"], "cpuCount": 1})
        assert requested.status_code == 202
        body = requested.json()
        assert set(body) == {"templateID", "buildID", "public", "names", "tags", "aliases"}
        assert (body["names"], body["aliases"], body["tags"], body["public"]) == (
            ["raw"],
            ["raw"],
            ["v1", "stable"],
            False,
        )
        template_id, build_id = body["templateID"], body["buildID"]
        status = http.get(f"/templates/{template_id}/builds/{build_id}/status")
        assert status.status_code == 200
        assert status.json() == {
            "logs": [],
            "logEntries": [],
            "templateID": template_id,
            "buildID": build_id,
            "status": "waiting",
        }
        upload = http.get(f"/templates/{template_id}/files/{'b' * 64}")
        assert upload.status_code == 201
        assert upload.json()["present"] is False and "/upload/" in upload.json()["url"]

        start = f"/v2/templates/{template_id}/builds/{build_id}"
        assert http.post(start, json={"fromImage": "ubuntu:22.04", "steps": []}).status_code == 202
        _error(http.post(start, json={"fromImage": "ubuntu:22.04"}), 409)
        (create,) = api.cluster.template_creates()
        assert create.template.fromImage == "ubuntu:22.04" and create.template.vCpuCount == 1

        offset = 0
        seen: list[dict[str, Any]] = []
        while True:
            page = http.get(
                f"/templates/{template_id}/builds/{build_id}/status", params={"logsOffset": offset}
            )
            info = page.json()
            assert len(info["logs"]) == len(info["logEntries"])
            seen += info["logEntries"]
            offset += len(info["logEntries"])
            if info["status"] == "ready" and not info["logEntries"]:
                break
            assert info["status"] == "building" or info["status"] == "ready"
        assert seen[0]["message"] == "pulling image ubuntu:22.04" and seen[0]["step"] == "base"
        assert {entry["level"] for entry in seen} == {"info"}

        logs = http.get(f"/templates/{template_id}/builds/{build_id}/logs").json()["logs"]
        assert [entry["message"] for entry in logs] == [entry["message"] for entry in seen]
        newest_first = http.get(
            f"/templates/{template_id}/builds/{build_id}/logs", params={"direction": "backward", "limit": 1}
        ).json()["logs"]
        assert [entry["message"] for entry in newest_first] == [seen[-1]["message"]]

        # v1 tagged the build, default did not: the name alone has no ready build
        tags = {tag["tag"]: tag["buildID"] for tag in http.get(f"/templates/{template_id}/tags").json()}
        assert tags == {"v1": build_id, "stable": build_id}
        refused = _error(http.post("/v2/sandboxes", json={"templateID": "raw"}), 400)
        assert "no ready build" in refused["message"]
        assert http.post("/v2/sandboxes", json={"templateID": "raw:stable"}).status_code == 201
        assert api.cluster.creates()[-1].sandbox.build_id == build_id


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, '"name" is required'),
        ({"name": "x", "cpuCount": 0}, "cpuCount must be at least 1"),
        ({"name": "x", "memoryMB": 64}, "memoryMB must be at least 128"),
        ({"name": "Bad Name!"}, "Invalid template reference"),
        ({"name": "x", "tags": ["no spaces"]}, "Invalid tag"),
    ],
)
def test_bad_build_requests_are_400(api: ApiHarness, body: dict[str, Any], message: str) -> None:
    with _http(api) as http:
        assert message in _error(http.post("/v3/templates", json=body), 400)["message"]


def test_bad_starts_and_unknown_builds_are_refused_as_json(api: ApiHarness) -> None:
    with _http(api) as http:
        body = http.post("/v3/templates", json={"alias": "legacy-alias"}).json()
        template_id, build_id = body["templateID"], body["buildID"]
        start = f"/v2/templates/{template_id}/builds/{build_id}"
        _error(http.post(start, json={"steps": []}), 400)
        _error(http.post(start, json={"fromImage": "a", "fromTemplate": "base"}), 400)
        _error(http.post(start, json={"fromImage": "a", "steps": [{"type": "NOPE"}]}), 400)
        _error(http.post(start, json={"fromTemplate": "nothing-here"}), 404)
        _error(http.post(f"/v2/templates/{template_id}/builds/{uuid.uuid4()}", json={"fromImage": "a"}), 404)
        _error(http.get(f"/templates/{template_id}/builds/{uuid.uuid4()}/status"), 404)
        _error(http.get(f"/templates/nothing/builds/{build_id}/status"), 404)
        _error(http.get(f"/templates/{template_id}/files/not-a-hash"), 400)
        _error(http.get(f"/templates/{template_id}/builds/{build_id}/status", params={"level": "loud"}), 400)
        _error(http.get(f"/templates/{template_id}/builds/{build_id}/logs", params={"direction": "up"}), 400)
        assert api.cluster.template_creates() == []  # nothing reached a node
        # a new request supersedes the waiting build nobody started
        http.post("/v3/templates", json={"name": "legacy-alias"})
        superseded = http.get(f"/templates/{template_id}/builds/{build_id}/status").json()
        assert superseded["status"] == "error" and "superseded" in superseded["reason"]["message"]
        _error(http.post(start, json={"fromImage": "a"}), 409)


def test_a_build_survives_an_api_restart_and_a_node_that_forgot_it_is_an_error(api: ApiHarness) -> None:
    node = api.cluster.nodes[0]
    node.templates.POLLS_TO_FINISH = 10**6  # never finishes until the test says so
    with _http(api) as http:
        first = http.post("/v3/templates", json={"name": "durable"}).json()
        second = http.post("/v3/templates", json={"name": "forgotten"}).json()
        for build in (first, second):
            url = f"/v2/templates/{build['templateID']}/builds/{build['buildID']}"
            assert http.post(url, json={"fromTemplate": "base"}).status_code == 202
        refused = _error(http.post("/v2/sandboxes", json={"templateID": "durable"}), 400)
        assert f"build {first['buildID']} is building" in refused["message"]
    api.restart()
    assert api.server is not None and api.server.builds is not None
    assert api.server.builds.watching == 2  # both picked up from the database
    with node.lock:
        del node.templates.builds[second["buildID"]]  # as if the node restarted
    node.templates.POLLS_TO_FINISH = 1
    with _http(api) as http:

        def status(build: dict[str, Any]) -> dict[str, Any]:
            url = f"/templates/{build['templateID']}/builds/{build['buildID']}/status"
            body: dict[str, Any] = http.get(url).json()
            return body

        wait_until(lambda: status(first)["status"] == "ready", what="the build to finish after the restart")
        lost = status(second)
        assert lost["status"] == "error" and "no longer knows it" in lost["reason"]["message"]
    store = api.server.store
    assert store is not None
    ready = api.on_api_loop(store.get_build(first["buildID"]))
    assert ready is not None and ready.status is BuildStatus.READY and ready.envd_version == "0.6.4"
    template = api.on_api_loop(store.get_template(first["templateID"]))
    assert template is not None and template.build_id == first["buildID"]


def test_the_node_chosen_for_the_uploads_builds_unless_it_cannot(tmp_path: Path) -> None:
    with running_api(tmp_path, nodes=2) as api, _http(api) as http:
        build = http.post("/v3/templates", json={"name": "placed"}).json()
        url = http.get(f"/templates/{build['templateID']}/files/{'d' * 64}").json()["url"]
        chosen = next(node for node in api.cluster.nodes if f"//{node.host}:" in url)
        other = next(node for node in api.cluster.nodes if node is not chosen)
        chosen.templates.refuse_creates = grpc.StatusCode.UNAVAILABLE
        start = f"/v2/templates/{build['templateID']}/builds/{build['buildID']}"
        assert http.post(start, json={"fromTemplate": "base"}).status_code == 202
        assert [len(chosen.templates.creates), len(other.templates.creates)] == [1, 1]
        assert api.server is not None and api.server.store is not None
        stored = api.on_api_loop(api.server.store.get_build(build["buildID"]))
        assert stored is not None and stored.node == other.address

        refused = http.post("/v3/templates", json={"name": "placed"}).json()
        for node in api.cluster.nodes:
            node.templates.refuse_creates = grpc.StatusCode.INVALID_ARGUMENT
        start = f"/v2/templates/{refused['templateID']}/builds/{refused['buildID']}"
        assert "the stub refuses" in _error(http.post(start, json={"fromTemplate": "base"}), 400)["message"]
        again = http.get(f"/templates/{refused['templateID']}/builds/{refused['buildID']}/status").json()
        assert again["status"] == "waiting"  # refused: it can be started again


def test_deleting_a_template_cancels_its_build_on_the_node(api: ApiHarness) -> None:
    node = api.cluster.nodes[0]
    node.templates.POLLS_TO_FINISH = 10**6
    with _http(api) as http:
        build = http.post("/v3/templates", json={"name": "doomed"}).json()
        url = f"/v2/templates/{build['templateID']}/builds/{build['buildID']}"
        assert http.post(url, json={"fromImage": "alpine:3"}).status_code == 202
        assert http.get("/templates/doomed").json()["buildStatus"] == "building"
        assert http.delete("/templates/doomed").status_code == 204
        _error(http.get(f"/templates/{build['templateID']}/builds/{build['buildID']}/status"), 404)
    (cancel,) = node.templates.deletes
    assert (cancel.templateID, cancel.buildID) == (build["templateID"], build["buildID"])
    assert build["buildID"] not in node.templates.builds
    assert api.server is not None and api.server.builds is not None
    wait_until(
        lambda: api.server is not None and api.server.builds is not None and not api.server.builds.watching
    )


def test_the_watcher_finishes_a_build_nobody_polls(api: ApiHarness) -> None:
    info = e2b.Template.build_in_background(_simple(), "background")
    assert api.server is not None and api.server.store is not None
    store = api.server.store

    def ready() -> bool:
        build = api.on_api_loop(store.get_build(info.build_id))
        return build is not None and build.status is BuildStatus.READY

    wait_until(ready, what="the watcher to record the build ready")
    e2b.Sandbox.create("background")


# -- tags -------------------------------------------------------------------------------------------------


def test_tags_are_assigned_listed_used_and_removed(api: ApiHarness) -> None:
    info = e2b.Template.build(_simple(), "tagged", tags=["v1"])
    assert sorted(info.tags) == ["default", "v1"]
    assigned = e2b.Template.assign_tags("tagged:v1", ["stable", "prod"])
    assert (assigned.build_id, sorted(assigned.tags)) == (info.build_id, ["prod", "stable"])
    listed = {tag.tag: tag.build_id for tag in e2b.Template.get_tags("tagged")}
    assert listed == {
        "default": info.build_id,
        "v1": info.build_id,
        "stable": info.build_id,
        "prod": info.build_id,
    }
    e2b.Sandbox.create("tagged:stable")
    assert api.cluster.creates()[-1].sandbox.build_id == info.build_id
    e2b.Template.remove_tags("tagged", "stable")
    with pytest.raises(e2b.SandboxException) as missing:
        e2b.Sandbox.create("tagged:stable")
    assert "404" in str(missing.value)
    with pytest.raises(e2b.TemplateException):
        e2b.Template.remove_tags("tagged", "default")  # 400: the current build is not removed
    with pytest.raises(e2b.TemplateException):
        e2b.Template.remove_tags("tagged", "never-there")  # 404
    e2b.Sandbox.create(f"tagged:{info.build_id}")  # a build id works as a tag


# -- deletes and gc ------------------------------------------------------------------------------------------


def _stored(storage: LocalStorage) -> set[uuid.UUID]:
    return {uuid.UUID(key.split("/", 1)[0]) for key in storage.list("") if not key.startswith("build-cache/")}


def _reads(storage: LocalStorage, build: str) -> set[uuid.UUID]:
    """The other builds ``build``'s headers read from."""
    from ember.build.reader import load_header

    found: set[uuid.UUID] = set()
    for name in ("memfile", "rootfs.ext4"):
        header: Header | None = load_header(storage, f"{build}/{name}.header")
        if header is not None:
            found |= set(header.referenced_builds())
    return found - {uuid.UUID(build)}


def _gc_runs(api: ApiHarness) -> int:
    assert api.server is not None and api.server.gc is not None
    return api.server.gc.runs


def _deleted(api: ApiHarness, since: int, storage: LocalStorage, before: set[uuid.UUID]) -> set[uuid.UUID]:
    """Wait for the gc runs a release after ``since`` runs asked for; the builds gone from ``before``."""
    assert api.server is not None and api.server.gc is not None
    gc = api.server.gc
    api.on_api_loop(gc.wait_idle())
    assert gc.runs > since and gc.last_error is None
    report = gc.last_report
    assert report is not None and not report.failed
    return before - _stored(storage)


def test_deletes_garbage_collect_exactly_the_builds_nothing_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path / "store" / "templates")
    base = write_synthetic_build(storage, uuid.UUID(BASE_BUILD), seed=1)
    orphan = write_synthetic_build(storage, uuid.uuid4(), base, seed=2)  # no row names it
    with running_api(tmp_path, storage=storage, storage_url=str(tmp_path / "store"), gc_grace_s=0) as api:
        api.sdk_env(monkeypatch)
        node = api.cluster.nodes[0]
        node.adopt_build(base)
        mine = e2b.Template.build(_simple(), "my-tpl")
        other = e2b.Template.build(_simple(), "other")
        mine_build, other_build = uuid.UUID(mine.build_id), uuid.UUID(other.build_id)
        paused = e2b.Sandbox.create("my-tpl")
        paused.pause()
        snapshot_build = uuid.UUID(node.pauses[0].build_id)
        assert mine_build in _reads(storage, str(snapshot_build))  # the snapshot reads my-tpl's build
        running = e2b.Sandbox.create("other")
        named = running.create_snapshot()
        named_build = uuid.UUID(node.checkpoints[0].build_id)
        everything = {base.build_id, orphan.build_id, mine_build, other_build, snapshot_build, named_build}
        assert _stored(storage) == everything

        # "other" goes; its build stays while a sandbox runs from it; the orphan goes
        since, before = _gc_runs(api), _stored(storage)
        with _http(api) as http:
            assert http.delete("/templates/other").status_code == 204
            assert http.get("/templates/aliases/other").status_code == 404
            _error(http.delete("/templates/other"), 404)
        assert _deleted(api, since, storage, before) == {orphan.build_id}

        # a named snapshot deleted (DELETE /templates/{snapshotID}): its build goes
        since, before = _gc_runs(api), _stored(storage)
        assert e2b.Sandbox.delete_snapshot(named.snapshot_id) is True
        assert _deleted(api, since, storage, before) == {named_build}

        # the sandbox of the deleted "other" ends: nothing names its build any more, so it goes
        since, before = _gc_runs(api), _stored(storage)
        running.kill()
        assert _deleted(api, since, storage, before) == {other_build}

        # my-tpl goes; its build stays: the paused sandbox's snapshot reads from it
        since, before = _gc_runs(api), _stored(storage)
        with _http(api) as http:
            assert http.delete(f"/templates/{mine.template_id}").status_code == 204
        assert _deleted(api, since, storage, before) == set()
        assert _stored(storage) == {base.build_id, mine_build, snapshot_build}

        # a sandbox of a build something still names ends: no gc run for it
        runs = _gc_runs(api)
        e2b.Sandbox.create("base").kill()
        assert api.server is not None and api.server.gc is not None
        api.on_api_loop(api.server.gc.wait_idle())
        assert _gc_runs(api) == runs

        # the paused sandbox still resumes; killing it drops its snapshot, and the rest goes
        resumed = e2b.Sandbox.connect(paused.sandbox_id)
        assert api.cluster.creates()[-1].sandbox.build_id == str(snapshot_build)
        since, before = _gc_runs(api), _stored(storage)
        resumed.kill()
        assert _deleted(api, since, storage, before) == {mine_build, snapshot_build}
        assert _stored(storage) == {base.build_id}  # the registered base template is a root


def test_without_storage_deletes_only_drop_rows(api: ApiHarness) -> None:
    info = e2b.Template.build(_simple(), "rows-only")
    with _http(api) as http:
        assert http.delete("/templates/rows-only").status_code == 204
        _error(http.get(f"/templates/{info.template_id}"), 404)
    assert api.server is not None and api.server.gc is not None
    assert api.server.gc.enabled is False and api.server.gc.runs == 0

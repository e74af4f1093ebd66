"""``Sandbox``'s state rules, with a fake sandbox process and a fake node: no VM, no slot, no root.

The fake worker answers each method the way the real sandbox process does (a ``StartReport``
for a start, a ``PauseReport`` for a pause), or fails or blocks where a test asks it to. The
fake node hands out that worker and a fixed slot and records what was claimed and released.
Workspaces are real directories under ``tmp_path``.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ember.build import TemplateInfo, TemplateMetadata
from ember.environment import Environment
from ember.errors import BuildError, EmberError, ObjectNotFound, StorageError
from ember.header import PAGE_SIZE, empty_device_header
from ember.network import SlotConfig
from ember.sandbox import (
    BuildInfo,
    BuildNotFound,
    ResumeOptions,
    Sandbox,
    SandboxEvent,
    SandboxGone,
    SandboxState,
    SandboxStateError,
    SchedulingInfo,
    StartReport,
    VmmKind,
)
from ember.sandbox import sandbox as sandbox_module
from ember.sandbox.records import ArtifactBuilds, PauseReport, PauseSpec

BUILD = uuid.UUID("11111111-1111-4111-8111-111111111111")
CHILD = uuid.UUID("22222222-2222-4222-8222-222222222222")
SLOT = SlotConfig().slot(7)


def _scheduling(build: uuid.UUID) -> SchedulingInfo:
    return SchedulingInfo(build, None, ArtifactBuilds(build, (build,), (PAGE_SIZE,)))


def _started() -> StartReport:
    return StartReport(0.01, 0.02, 0.03, _scheduling(BUILD))


def _paused(spec: PauseSpec) -> PauseReport:
    return PauseReport(
        spec.build_id,
        0.1,
        None,
        empty_device_header(spec.build_id, PAGE_SIZE, PAGE_SIZE),
        _scheduling(spec.build_id),
        spec.metadata,
    )


class FakeWorker:
    """WorkerClient-shaped: ``call`` answers from ``answers`` (a value, or a callable given the args)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.terminated = threading.Event()
        self.answers: dict[str, Any] = {
            "resume": _started(),
            "boot": _started(),
            "check": None,
            "kill": None,
            "pause": _paused,
            "checkpoint": lambda spec: (_paused(spec), _started()),
        }

    def call(
        self,
        method: str,
        *args: Any,
        on_event: Callable[[SandboxEvent], None] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        self.calls.append(method)
        answer = self.answers[method]
        if isinstance(answer, BaseException):
            raise answer
        return answer(*args) if callable(answer) else answer

    @property
    def alive(self) -> bool:
        return not self.terminated.is_set()

    @property
    def sentinel(self) -> int:
        return -1

    def exit_reason(self) -> str:
        return "the VMM exited with status 1"

    def terminate(self, timeout_s: float = 0) -> None:
        self.terminated.set()


class FakeNode:
    """Node-shaped: one worker, one slot, claims and releases recorded."""

    def __init__(self, tmp_path: Path, worker: FakeWorker) -> None:
        self.env = Environment.resolve(str(tmp_path / "store"))
        self.worker = worker
        self.events: list[SandboxEvent] = []
        self.claimed: list[uuid.UUID] = []
        self.released_claims: list[uuid.UUID] = []
        self.kept_complete: list[bool] = []
        self.released_slots: list[int] = []
        self.registered: dict[str, Sandbox] = {}
        self.forgotten: list[uuid.UUID] = []
        self.store_answer: EmberError | None = None
        """What the store says of a build once it is forgotten (not cached): None, it is there."""

    def build_info(self, build_id: uuid.UUID) -> BuildInfo:
        if build_id in self.forgotten and self.store_answer is not None:
            raise self.store_answer
        metadata = TemplateMetadata(
            version=2, template=TemplateInfo(str(build_id), "vmlinux-test", "qemu-7.2")
        )
        return BuildInfo(build_id, metadata, VmmKind.QEMU, Path("/nonexistent"), None, 1 << 20, 1, 1 << 20)

    def forget_build(self, build_id: uuid.UUID) -> None:
        self.forgotten.append(build_id)

    def take_worker(self) -> FakeWorker:
        return self.worker

    def take_slot(self, egress: object = None) -> object:
        return SLOT

    def release_slot(self, slot: Any) -> None:
        self.released_slots.append(slot.idx)

    def claim(self, build_id: uuid.UUID, writer: str) -> uuid.UUID:
        self.claimed.append(build_id)
        return build_id

    def release_claim(self, build_id: uuid.UUID, *, keep_complete: bool = True) -> None:
        self.released_claims.append(build_id)
        self.kept_complete.append(keep_complete)

    def register(self, sandbox: Sandbox) -> None:
        self.registered[sandbox.id] = sandbox

    def unregister(self, sandbox: Sandbox) -> None:
        self.registered.pop(sandbox.id, None)

    def emit(self, event: SandboxEvent) -> None:
        self.events.append(event)

    def defer(self, work: Callable[[], None]) -> None:
        """The node's reaper thread, here: the work runs before the call that deferred it returns."""
        work()


@pytest.fixture
def worker() -> FakeWorker:
    return FakeWorker()


@pytest.fixture
def node(tmp_path: Path, worker: FakeWorker, monkeypatch: pytest.MonkeyPatch) -> FakeNode:
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return FakeNode(tmp_path, worker)


def _resume(node: FakeNode) -> Sandbox:
    return Sandbox.resume(node, ResumeOptions(BUILD))  # type: ignore[arg-type]


def _workspaces(node: FakeNode, sandbox: Sandbox) -> list[Path]:
    work = sorted((node.env.orchestrator_base_path / "sandbox").glob(f"{sandbox.id}-*"))
    sockets = sorted(Path(tempfile.gettempdir()).glob("ember-sbx-*"))
    return work + sockets


def test_a_resumed_sandbox_is_running_in_its_slot_with_a_workspace(node: FakeNode) -> None:
    sandbox = _resume(node)
    assert sandbox.state is SandboxState.RUNNING
    assert sandbox.slot == SLOT
    assert sandbox.envd_url == f"http://{SLOT.host_ip}:49983"
    assert len(_workspaces(node, sandbox)) == 2
    assert node.registered == {sandbox.id: sandbox}
    assert [event.name for event in node.events] == ["starting", "running"]
    sandbox.check()


def test_a_paused_sandbox_refuses_every_call_naming_its_state(node: FakeNode, worker: FakeWorker) -> None:
    sandbox = _resume(node)
    result = sandbox.pause(CHILD)
    assert result.build_id == CHILD and node.claimed == [CHILD]
    assert sandbox.state is SandboxState.PAUSED
    assert sandbox.wait(0) is SandboxState.PAUSED
    for call in (lambda: sandbox.pause(uuid.uuid4()), lambda: sandbox.checkpoint(uuid.uuid4()), sandbox.check,
                 sandbox.usage, sandbox.accesses):  # fmt: skip
        with pytest.raises(SandboxStateError) as refused:
            call()
        assert refused.value.state == "paused"
        assert f"sandbox {sandbox.id}: it is paused" in str(refused.value)
    with pytest.raises(SandboxStateError, match="it is paused, and pause needs it running"):
        sandbox.pause(uuid.uuid4())
    with pytest.raises(SandboxStateError, match="it is paused"):
        _ = sandbox.slot
    assert worker.calls == ["resume", "pause"], "a refused call reached the sandbox process"
    assert worker.terminated.is_set()
    assert node.released_slots == [SLOT.idx]
    assert _workspaces(node, sandbox) == []


def test_kill_is_safe_in_every_state_and_a_killed_sandbox_refuses_calls(
    node: FakeNode, worker: FakeWorker
) -> None:
    sandbox = _resume(node)
    sandbox.kill()
    assert sandbox.state is SandboxState.STOPPED
    sandbox.kill()  # again: nothing happens
    assert worker.calls == ["resume", "kill"]
    with pytest.raises(SandboxStateError) as refused:
        sandbox.pause(CHILD)
    assert refused.value.state == "stopped" and refused.value.action == "pause"
    assert node.claimed == [], "a refused pause claimed its target"
    paused = _resume(FakeNode(node.env.orchestrator_base_path.parent.parent, FakeWorker()))
    paused.pause(CHILD)
    paused.kill()
    assert paused.state is SandboxState.PAUSED, "kill turned a paused sandbox into a stopped one"


def test_a_start_that_fails_leaves_a_failed_sandbox_and_releases_everything(
    node: FakeNode, worker: FakeWorker
) -> None:
    worker.answers["resume"] = BuildError("build 1111 has an unusable snapfile")
    with pytest.raises(BuildError, match="unusable snapfile"):
        _resume(node)
    [failed] = [event for event in node.events if event.name == "failed"]
    assert "unusable snapfile" in failed.message
    assert worker.terminated.is_set()
    assert node.released_slots == [SLOT.idx]
    assert node.registered == {}
    assert list((node.env.orchestrator_base_path / "sandbox").iterdir()) == []
    assert list(Path(tempfile.gettempdir()).glob("ember-sbx-*")) == []


def test_a_resume_of_a_build_deleted_since_it_was_cached_is_not_found(
    node: FakeNode, worker: FakeWorker
) -> None:
    node.store_answer = BuildNotFound(f"build {BUILD} has no metadata.json")
    worker.answers["resume"] = ObjectNotFound(f"{BUILD}/memfile.header", "gs://bucket")
    with pytest.raises(BuildNotFound, match=r"no metadata\.json"):
        _resume(node)
    assert node.forgotten == [BUILD]
    assert node.registered == {} and node.released_slots == [SLOT.idx]


@pytest.mark.parametrize("store_answer", [None, StorageError("the bucket did not answer")])
def test_a_missing_object_of_a_build_not_known_gone_fails_the_resume_as_it_is(
    node: FakeNode, worker: FakeWorker, store_answer: EmberError | None
) -> None:
    node.store_answer = store_answer
    worker.answers["resume"] = ObjectNotFound(f"{BUILD}/memfile.header", "gs://bucket")
    with pytest.raises(ObjectNotFound):
        _resume(node)
    assert node.forgotten == [BUILD], "the next resume must not trust the cached build"


def test_a_pause_that_fails_fails_the_sandbox_and_gives_up_its_target(
    node: FakeNode, worker: FakeWorker
) -> None:
    sandbox = _resume(node)
    worker.answers["pause"] = BuildError("writing the memfile diff failed: disk full")
    with pytest.raises(BuildError, match="disk full"):
        sandbox.pause(CHILD)
    assert sandbox.state is SandboxState.FAILED
    assert sandbox.failure == "writing the memfile diff failed: disk full"
    # Even a target the sandbox process managed to complete goes: the caller was told it failed.
    assert node.released_claims == [CHILD] and node.kept_complete == [False]
    with pytest.raises(SandboxStateError, match="it is failed"):
        sandbox.check()


def test_a_sandbox_process_that_is_gone_fails_the_sandbox(node: FakeNode, worker: FakeWorker) -> None:
    sandbox = _resume(node)
    worker.answers["check"] = SandboxGone("the sandbox process exited during check")
    with pytest.raises(SandboxGone):
        sandbox.check()
    assert sandbox.state is SandboxState.FAILED
    other = _resume(FakeNode(node.env.orchestrator_base_path.parent.parent, FakeWorker()))
    other.process_exited()  # the monitor saw its process exit
    assert other.state is SandboxState.FAILED and other.failure == "the VMM exited with status 1"


def test_a_checkpoint_keeps_the_sandbox_running_from_the_new_build(node: FakeNode) -> None:
    sandbox = _resume(node)
    sandbox.checkpoint(CHILD)
    assert sandbox.state is SandboxState.RUNNING
    assert sandbox.build_id == CHILD
    sandbox.check()


def test_calls_wait_for_a_running_pause_and_then_see_its_outcome(node: FakeNode, worker: FakeWorker) -> None:
    sandbox = _resume(node)
    entered, release = threading.Event(), threading.Event()

    def slow_pause(spec: PauseSpec) -> PauseReport:
        entered.set()
        assert release.wait(10)
        return _paused(spec)

    worker.answers["pause"] = slow_pause
    pausing = threading.Thread(target=sandbox.pause, args=(CHILD,))
    pausing.start()
    assert entered.wait(10)
    assert sandbox.state is SandboxState.PAUSING
    outcome: list[BaseException] = []
    checking = threading.Thread(target=lambda: _record(sandbox.check, outcome))
    checking.start()
    time.sleep(0.1)
    assert checking.is_alive(), "check ran while the pause was in progress"
    release.set()
    pausing.join(10)
    checking.join(10)
    [error] = outcome
    assert isinstance(error, SandboxStateError) and error.state == "paused"


def _record(call: Callable[[], object], outcome: list[BaseException]) -> None:
    try:
        call()
    except BaseException as exc:
        outcome.append(exc)


def test_kill_ends_a_stuck_call_by_signal_within_its_wait(
    node: FakeNode, worker: FakeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox_module, "KILL_WAIT_S", 0.2)
    sandbox = _resume(node)

    def stuck_pause(spec: PauseSpec) -> PauseReport:
        assert worker.terminated.wait(10), "nobody ended the stuck sandbox process"
        raise SandboxGone("the sandbox process exited during pause")

    worker.answers["pause"] = stuck_pause
    pausing = threading.Thread(target=lambda: _record(lambda: sandbox.pause(CHILD), []))
    pausing.start()
    time.sleep(0.05)
    started = time.monotonic()
    sandbox.kill()
    assert time.monotonic() - started < 5
    pausing.join(10)
    assert worker.terminated.is_set()
    assert sandbox.state in (SandboxState.FAILED, SandboxState.STOPPED)
    assert node.released_claims == [CHILD]

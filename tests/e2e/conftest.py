"""One ``ember serve`` for the whole end-to-end session, and per-test sandboxes through E2B's SDK.

The serve keeps its storage in ``<EMBER_CACHE_DIR>/e2e-serve`` (default /var/cache/ember/e2e-serve;
``EMBER_E2E_SERVE_STORAGE`` names another), like the kernel cache: the first run on a machine
builds the ``base`` template (a minute or two), later runs start in seconds. A cached storage
that does not come up, or whose first sandbox fails, is moved to ``<storage>.broken``
(replacing an older one) and the run starts fresh. A lock file beside it keeps two sessions
from sharing one storage: the second gets a fresh one in its temp dir. At the end the serve
must exit 0 and leave no QEMU and no workspace of its sandboxes; then the builds no template
or paused sandbox uses any more are collected (``ember gc``), so the cache does not grow run
by run.

Every test gets the four ``E2B_*`` variables set (``sdk_env``), as a user exports them from
serve's output, and a ``sandboxes`` factory whose sandboxes carry the test's own metadata tag
and are all killed when the test ends, whatever happened.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import e2b
import pytest
from serve_harness import (
    PORT_TAKEN_HINTS,
    Sandboxes,
    ServePorts,
    ServeProcess,
    cached_storage,
    collect_garbage,
    sdk_environment,
)


def _smoke(stack: ServeProcess) -> None:
    """The serve is usable when a sandbox of ``base`` starts and runs a command."""
    with sdk_environment(stack.env):
        sandbox = e2b.Sandbox.create("base", timeout=60, metadata={"e2e": "smoke"})
        try:
            assert sandbox.commands.run("true").exit_code == 0
        finally:
            sandbox.kill()


def _start_usable(storage: Path, logs: Path) -> ServeProcess:
    """serve on ``storage``; a cache that fails is set aside and the start repeated on a fresh one."""
    ports = ServePorts.pick()
    for attempt in range(3):
        stack = ServeProcess(storage, logs / f"serve-{attempt}.log", ports=ports)
        try:
            stack.start()
            _smoke(stack)
            return stack
        except Exception as exc:  # not coming up, or a first sandbox that fails: either way
            stack.kill()
            if attempt == 2:
                pytest.fail(f"ember serve is not usable, even on a fresh storage: {exc}")
            if any(hint in stack.log_tail() for hint in PORT_TAKEN_HINTS):
                ports = ServePorts.pick()  # a free port was taken in between: the storage is fine
                continue
            broken = storage.with_name(storage.name + ".broken")
            print(f"e2e: serve on {storage} failed ({exc}); moved to {broken}, fresh start", file=sys.stderr)
            shutil.rmtree(broken, ignore_errors=True)
            if storage.exists():
                storage.rename(broken)
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """The session's ``ember serve``; stopped at the end: exit 0, nothing of its sandboxes left."""
    if os.geteuid() != 0:
        pytest.skip("ember serve runs sandboxes: needs root (network namespaces, mounts)")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (scripts/setup.sh installs qemu-system-x86)")
    logs = tmp_path_factory.mktemp("serve")
    with cached_storage(logs / "storage") as (storage, cached):
        stack = _start_usable(storage, logs)
        try:
            yield stack
        finally:
            code = stack.stop()
            left = stack.leftovers()
            if cached and code == 0:
                collect_garbage(storage, logs)
        assert code == 0, f"ember serve exited with {code}\n{stack.log_tail()}"
        assert left == [], f"ember serve left these behind: {left}\n{stack.log_tail()}"


@pytest.fixture(autouse=True)
def sdk_env(serve: ServeProcess, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The four variables a user exports from serve's stdout, set for the test."""
    for name, value in serve.env.items():
        monkeypatch.setenv(name, value)
    return serve.env


@pytest.fixture
def sandboxes(sdk_env: dict[str, str], request: pytest.FixtureRequest) -> Iterator[Sandboxes]:
    name = "".join(c if c.isalnum() else "-" for c in request.node.name.removeprefix("test_"))
    made = Sandboxes(f"{name[:40]}-{uuid.uuid4().hex[:8]}")
    try:
        yield made
    finally:
        made.cleanup()

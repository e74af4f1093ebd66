"""The official e2b Python SDK, unchanged, against the bundled agent.

The SDK's debug mode (``E2B_DEBUG=true`` / ``debug=True``) skips the E2B API and talks to
envd at ``http://localhost:49983``; this is exactly what a guest's envd must serve.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envd_agent import port_in_use, running_agent

from ember.envd import build_agent

e2b = pytest.importorskip("e2b", reason="the e2b SDK is a test extra: pip install -e '.[test]'")

SDK_ENVD_PORT = 49983


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if port_in_use(SDK_ENVD_PORT):
        pytest.skip(f"port {SDK_ENVD_PORT} is taken: the SDK's debug mode can only reach envd there")
    bundle = build_agent(tmp_path_factory.mktemp("envd") / "envd")
    with running_agent(bundle, tmp_path_factory.mktemp("home"), port=SDK_ENVD_PORT):
        yield e2b.Sandbox.create(debug=True)


def test_commands_run_returns_stdout_and_exit_code(sandbox: Any) -> None:
    result = sandbox.commands.run("echo hi; echo there >&2")
    assert (result.stdout, result.stderr, result.exit_code) == ("hi\n", "there\n", 0)


def test_failing_command_raises_the_sdk_exit_exception(sandbox: Any) -> None:
    with pytest.raises(e2b.CommandExitException) as caught:
        sandbox.commands.run("exit 3")
    assert caught.value.exit_code == 3


def test_background_command_can_be_listed_and_killed(sandbox: Any) -> None:
    handle = sandbox.commands.run("sleep 100", background=True)
    assert handle.pid in {process.pid for process in sandbox.commands.list()}
    assert sandbox.commands.kill(handle.pid)
    with pytest.raises(e2b.CommandExitException):
        handle.wait()


def test_files_write_read_and_list(sandbox: Any, tmp_path: Path) -> None:
    info = sandbox.files.write(str(tmp_path / "dir" / "a.txt"), "hello")
    sandbox.files.write(str(tmp_path / "dir" / "b.bin"), b"\x00\xff\r\n")
    assert info.path == str(tmp_path / "dir" / "a.txt")
    assert sandbox.files.read(str(tmp_path / "dir" / "a.txt")) == "hello"
    assert sandbox.files.read(str(tmp_path / "dir" / "b.bin"), format="bytes") == b"\x00\xff\r\n"
    assert [entry.name for entry in sandbox.files.list(str(tmp_path / "dir"))] == ["a.txt", "b.bin"]


def test_files_exists_make_dir_rename_remove(sandbox: Any, tmp_path: Path) -> None:
    assert sandbox.files.make_dir(str(tmp_path / "d"))
    assert not sandbox.files.make_dir(str(tmp_path / "d"))
    sandbox.files.write(str(tmp_path / "d" / "f"), "x")
    renamed = sandbox.files.rename(str(tmp_path / "d" / "f"), str(tmp_path / "d" / "g"))
    assert renamed.name == "g"
    assert sandbox.files.exists(str(tmp_path / "d" / "g"))
    sandbox.files.remove(str(tmp_path / "d"))
    assert not sandbox.files.exists(str(tmp_path / "d"))


def test_reading_a_missing_file_raises_not_found(sandbox: Any, tmp_path: Path) -> None:
    with pytest.raises(e2b.NotFoundException):
        sandbox.files.read(str(tmp_path / "missing"))


def test_stdin_reaches_a_background_command(sandbox: Any) -> None:
    handle = sandbox.commands.run("cat", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "typed")
    sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "typed"


def test_commands_connect_reattaches_to_a_running_command(sandbox: Any) -> None:
    handle = sandbox.commands.run("read line; echo got $line", background=True, stdin=True)
    handle.disconnect()
    attached = sandbox.commands.connect(handle.pid)
    sandbox.commands.send_stdin(handle.pid, "x\n")
    assert attached.wait().stdout == "got x\n"


def test_watch_dir_reports_a_created_file(sandbox: Any, tmp_path: Path) -> None:
    watcher = sandbox.files.watch_dir(str(tmp_path))
    (tmp_path / "new.txt").write_text("x")
    try:
        events = watcher.get_new_events()
    finally:
        watcher.stop()
    assert [(event.name, event.type.name) for event in events] == [("new.txt", "CREATE")]

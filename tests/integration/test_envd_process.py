"""process.Process against the bundled agent: output streaming, exit codes, stdin, signals, re-attach."""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from envd_agent import Agent, envelopes, request, stream_json, unary_json

from ember.envd import EnvdClient, EnvdError


def test_output_arrives_in_chunks_in_the_order_it_was_printed(client: EnvdClient) -> None:
    chunks: list[bytes] = []
    result = client.run("echo one; sleep 0.3; echo two", on_stdout=chunks.append)
    assert chunks == [b"one\n", b"two\n"]
    assert result.stdout == b"one\ntwo\n"
    assert result.exit_code == 0


def test_non_zero_exit_code_and_stderr_are_reported(client: EnvdClient) -> None:
    result = client.run("echo oops >&2; exit 7")
    assert (result.exit_code, result.stderr, result.status) == (7, b"oops\n", "exit status 7")


def test_a_program_runs_without_a_shell_with_its_arguments_verbatim(client: EnvdClient) -> None:
    result = client.run_program("/bin/echo", ["$HOME", "a  b"])
    assert (result.stdout, result.exit_code) == (b"$HOME a  b\n", 0)
    with pytest.raises(EnvdError, match="cannot start '/bin/ember-no-such-program'"):
        client.run_program("/bin/ember-no-such-program")


def test_env_vars_from_init_and_from_the_call_reach_the_process(agent: Agent) -> None:
    client = agent.client()
    client.init(env_vars={"FROM_INIT": "init-value"})
    result = client.run('echo "$FROM_INIT $FROM_CALL"', envs={"FROM_CALL": "call-value"})
    assert result.stdout == b"init-value call-value\n"


def test_process_runs_in_the_requested_directory_as_the_requested_user(
    client: EnvdClient, tmp_path: Path
) -> None:
    result = client.run("pwd; id -un", cwd=str(tmp_path), user="root")
    assert result.stdout.decode().split() == [str(tmp_path), "root"]


def test_unknown_user_is_refused_as_unauthenticated(client: EnvdClient) -> None:
    with pytest.raises(EnvdError) as caught:
        client.run("true", user="no-such-user-here")
    assert caught.value.code == "unauthenticated"


def test_stdin_is_delivered_and_close_stdin_ends_cat(client: EnvdClient) -> None:
    handle = client.start("cat", stdin=True)
    handle.send_stdin(b"hello ")
    handle.send_stdin(b"world")
    handle.close_stdin()
    result = handle.wait()
    assert (result.stdout, result.exit_code) == (b"hello world", 0)


def test_send_signal_kills_a_sleeping_process(client: EnvdClient) -> None:
    handle = client.start("sleep 100")
    handle.kill()
    result = handle.wait()
    assert (result.exit_code, result.status) == (-1, "signal: killed")


def test_list_shows_running_processes_with_tag_and_config(client: EnvdClient) -> None:
    handle = client.start("sleep 100", tag="sleeper")
    try:
        listed = {info.pid: info for info in client.list_processes()}
        assert listed[handle.pid].tag == "sleeper"
        assert listed[handle.pid].args == ("-l", "-c", "sleep 100")
    finally:
        handle.kill()
        handle.wait()
    assert handle.pid not in {info.pid for info in client.list_processes()}


def test_connect_reattaches_by_pid_and_by_tag_after_the_starter_left(client: EnvdClient) -> None:
    starter = client.start("read line; echo got $line", stdin=True, tag="reader")
    starter.close()
    by_tag = client.connect(tag="reader")
    assert by_tag.pid == starter.pid
    by_tag.close()
    attached = client.connect(pid=starter.pid)
    attached.send_stdin(b"ping\n")
    result = attached.wait()
    assert (result.stdout, result.exit_code) == (b"got ping\n", 0)


def test_connect_to_an_unknown_pid_is_not_found(client: EnvdClient) -> None:
    with pytest.raises(EnvdError) as caught:
        client.connect(pid=999_999_999)
    assert caught.value.code == "not_found"


def test_run_timeout_kills_the_process_and_raises_deadline_exceeded(client: EnvdClient) -> None:
    with pytest.raises(EnvdError) as caught:
        client.run("sleep 100", timeout_s=0.5)
    assert caught.value.code == "deadline_exceeded"
    deadline = time.monotonic() + 5
    while any(info.args[-1] == "sleep 100" for info in client.list_processes()):
        assert time.monotonic() < deadline, "the timed-out process is still running"
        time.sleep(0.05)


def test_start_with_the_json_codec_streams_base64_data_and_a_clean_end(agent: Agent) -> None:
    messages, trailer = stream_json(
        agent.url,
        "process.Process/Start",
        {"process": {"cmd": "/bin/echo", "args": ["json"]}, "stdin": False},
    )
    events = [message["event"] for message in messages]
    assert "start" in events[0] and events[0]["start"]["pid"] > 0
    assert base64.b64decode(events[1]["data"]["stdout"]) == b"json\n"
    assert events[-1]["end"] == {"exited": True, "status": "exit status 0"}
    assert trailer == {}


def test_stream_input_feeds_stdin_in_order(agent: Agent, client: EnvdClient) -> None:
    handle = client.start("cat", stdin=True)
    frames = [
        {"start": {"process": {"pid": handle.pid}}},
        {"data": {"input": {"stdin": base64.b64encode(b"a").decode()}}},
        {"data": {"input": {"stdin": base64.b64encode(b"b").decode()}}},
    ]
    body = b"".join(struct.pack(">BI", 0, len(p)) + p for p in (json.dumps(f).encode() for f in frames))
    status, _, reply = request(
        agent.url, "/process.Process/StreamInput", body, {"Content-Type": "application/connect+json"}
    )
    assert status == 200
    assert [flags for flags, _ in envelopes(reply)] == [0, 2]
    handle.close_stdin()
    assert handle.wait().stdout == b"ab"


def _pty_start(agent: Agent, script: str, size: dict[str, int] | None = None) -> tuple[list[Any], Any]:
    request: dict[str, Any] = {"process": {"cmd": "/bin/sh", "args": ["-c", script]}, "pty": {}}
    if size is not None:
        request["pty"]["size"] = size
    messages, trailer = stream_json(agent.url, "process.Process/Start", request)
    return [message["event"] for message in messages], trailer


def _pty_output(events: list[Any]) -> bytes:
    return b"".join(base64.b64decode(event["data"]["pty"]) for event in events if "data" in event)


def test_a_pty_process_is_a_session_leader_with_the_pty_as_controlling_terminal(agent: Agent) -> None:
    script = (
        'stty size; echo "$TERM"; [ "$(cut -d" " -f6 /proc/$$/stat)" = $$ ] && echo leader; '
        ": </dev/tty && echo ctty; exit 4"
    )
    events, trailer = _pty_start(agent, script, {"rows": 5, "cols": 7})
    assert trailer == {}
    assert all("stdout" not in event.get("data", {}) for event in events)
    assert _pty_output(events) == b"5 7\r\nxterm-256color\r\nleader\r\nctty\r\n"
    assert events[-1]["end"] == {"exitCode": 4, "exited": True, "status": "exit status 4"}


def test_a_pty_without_a_size_gets_24_by_80(agent: Agent) -> None:
    events, _ = _pty_start(agent, "stty size")
    assert _pty_output(events) == b"24 80\r\n"


def test_a_pty_size_beyond_16_bits_is_invalid(agent: Agent) -> None:
    events, trailer = _pty_start(agent, "true", {"rows": 70_000, "cols": 80})
    assert events == []
    assert trailer["error"]["code"] == "invalid_argument"


def test_input_of_the_wrong_kind_is_a_failed_precondition(agent: Agent, client: EnvdClient) -> None:
    piped = client.start("sleep 30", stdin=True)
    try:
        status, error = unary_json(
            agent.url, "process.Process/Update", {"process": {"pid": piped.pid}, "pty": {"size": {"rows": 1}}}
        )
        assert (status, error["code"]) == (400, "failed_precondition")
        assert "has no pty" in error["message"]
        pty_input = {"process": {"pid": piped.pid}, "input": {"pty": base64.b64encode(b"x").decode()}}
        status, error = unary_json(agent.url, "process.Process/SendInput", pty_input)
        assert (status, error["code"]) == (400, "failed_precondition")
    finally:
        piped.kill()
        piped.wait()


SILENT_RAW = "stty raw -echo; exec sleep 30"  # raw mode: a full input queue blocks the writer


def test_a_pty_whose_program_never_reads_still_ends_when_killed(agent: Agent, client: EnvdClient) -> None:
    started: list[Any] = []
    starter = threading.Thread(target=lambda: started.append(_pty_start(agent, SILENT_RAW)), daemon=True)
    starter.start()
    deadline = time.monotonic() + 10
    while not (pids := [p.pid for p in client.list_processes() if p.args == ("-c", SILENT_RAW)]):
        assert time.monotonic() < deadline, "the pty process did not appear"
        time.sleep(0.02)
    flood = {"process": {"pid": pids[0]}, "input": {"pty": base64.b64encode(b"x" * (1 << 20)).decode()}}
    typed: list[tuple[int, Any]] = []
    typist = threading.Thread(
        target=lambda: typed.append(unary_json(agent.url, "process.Process/SendInput", flood))
    )
    typist.start()
    time.sleep(0.3)
    assert typist.is_alive(), "1 MiB of input was taken by a program that reads none"
    status, _ = unary_json(
        agent.url, "process.Process/SendSignal", {"process": {"pid": pids[0]}, "signal": 9}
    )
    assert status == 200
    starter.join(10)
    typist.join(10)
    assert not starter.is_alive() and not typist.is_alive()
    events, _ = started[0]
    assert events[-1]["end"]["status"] == "signal: killed"
    assert typed[0][0] == 400 and typed[0][1]["code"] == "failed_precondition"


def test_a_pty_ends_soon_after_its_process_though_a_background_child_holds_the_terminal(agent: Agent) -> None:
    began = time.monotonic()
    events, _ = _pty_start(agent, "sleep 5 & echo started-bg; exit 6")
    assert time.monotonic() - began < 4, "the end waited for the background child"
    assert _pty_output(events) == b"started-bg\r\n"
    assert events[-1]["end"]["exitCode"] == 6

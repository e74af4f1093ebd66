"""The QMP client against a scripted server on a unix socket (no QEMU)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ember.errors import EmberError
from ember.vmm.qemu import QmpClient

QEMU_VERSION = {"qemu": {"major": 7, "minor": 2, "micro": 0}}
GREETING: dict[str, object] = {"QMP": {"version": QEMU_VERSION, "capabilities": []}}
Script = Callable[[socket.socket, "_Lines"], None]


class _Lines:
    def __init__(self, conn: socket.socket) -> None:
        self._file = conn.makefile("rb")
        self.received: list[dict[str, object]] = []

    def close(self) -> None:
        self._file.close()

    def next(self) -> dict[str, object]:
        message: dict[str, object] = json.loads(self._file.readline())
        self.received.append(message)
        return message


def _send(conn: socket.socket, *messages: dict[str, object]) -> None:
    conn.sendall(b"".join(json.dumps(m).encode() + b"\r\n" for m in messages))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[Script], tuple[Path, list[_Lines]]]]:
    threads: list[threading.Thread] = []

    def start(script: Script) -> tuple[Path, list[_Lines]]:
        path = tmp_path / "qmp.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(1)
        seen: list[_Lines] = []

        def run() -> None:
            conn, _ = listener.accept()
            listener.close()
            with conn:
                lines = _Lines(conn)
                seen.append(lines)
                _send(conn, GREETING)
                negotiation = lines.next()
                _send(conn, {"return": {}, "id": negotiation["id"]})
                script(conn, lines)
                lines.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        return path, seen

    yield start
    for thread in threads:
        thread.join(5)


def test_commands_return_their_value_and_negotiation_happens_first(
    serve: Callable[[Script], tuple[Path, list[_Lines]]],
) -> None:
    def script(conn: socket.socket, lines: _Lines) -> None:
        request = lines.next()
        _send(conn, {"return": {"status": "running", "running": True}, "id": request["id"]})

    path, seen = serve(script)
    client = QmpClient.connect(path, 5)
    assert client.greeting == GREETING
    assert client.execute("query-status") == {"status": "running", "running": True}
    client.close()
    assert [m["execute"] for m in seen[0].received] == ["qmp_capabilities", "query-status"]


def test_arguments_are_sent_as_given(serve: Callable[[Script], tuple[Path, list[_Lines]]]) -> None:
    def script(conn: socket.socket, lines: _Lines) -> None:
        request = lines.next()
        _send(conn, {"return": {}, "id": request["id"]})

    path, seen = serve(script)
    client = QmpClient.connect(path, 5)
    client.execute("migrate", {"uri": "exec:cat > /tmp/state"})
    client.close()
    assert seen[0].received[1]["arguments"] == {"uri": "exec:cat > /tmp/state"}


def test_an_error_reply_raises_with_qemus_description(
    serve: Callable[[Script], tuple[Path, list[_Lines]]],
) -> None:
    def script(conn: socket.socket, lines: _Lines) -> None:
        request = lines.next()
        _send(conn, {"error": {"class": "GenericError", "desc": "no such device"}, "id": request["id"]})
        request = lines.next()
        _send(conn, {"return": "still fine", "id": request["id"]})

    path, _ = serve(script)
    client = QmpClient.connect(path, 5)
    with pytest.raises(EmberError, match="QEMU refused device_del: GenericError: no such device"):
        client.execute("device_del")
    assert client.execute("query-version") == "still fine"
    client.close()


def test_events_arriving_before_a_reply_are_kept_for_wait_event(
    serve: Callable[[Script], tuple[Path, list[_Lines]]],
) -> None:
    def script(conn: socket.socket, lines: _Lines) -> None:
        request = lines.next()
        _send(
            conn,
            {"event": "STOP", "data": {}},
            {"event": "RESUME", "data": {}},
            {"return": {}, "id": request["id"]},
        )

    path, _ = serve(script)
    client = QmpClient.connect(path, 5)
    client.execute("stop")
    assert client.wait_event("RESUME", 1)["event"] == "RESUME"
    client.close()


def test_qemu_exiting_mid_command_is_an_error_not_a_hang(
    serve: Callable[[Script], tuple[Path, list[_Lines]]],
) -> None:
    def script(conn: socket.socket, lines: _Lines) -> None:
        lines.next()

    path, _ = serve(script)
    client = QmpClient.connect(path, 5)
    with pytest.raises(EmberError, match="closed the connection"):
        client.execute("quit", timeout_s=5)


def test_a_silent_qemu_times_out(serve: Callable[[Script], tuple[Path, list[_Lines]]]) -> None:
    release = threading.Event()

    def script(conn: socket.socket, lines: _Lines) -> None:
        lines.next()
        release.wait(5)

    path, _ = serve(script)
    client = QmpClient.connect(path, 5)
    with pytest.raises(EmberError, match=r"no reply within 0\.2 s"):
        client.execute("query-status", timeout_s=0.2)
    release.set()
    client.close()


def test_connecting_to_a_socket_nobody_serves_fails_after_the_timeout(tmp_path: Path) -> None:
    with pytest.raises(EmberError, match="cannot connect to QMP socket"):
        QmpClient.connect(tmp_path / "absent.sock", 0.1)


def test_connecting_gives_up_at_once_when_the_vmm_has_exited(tmp_path: Path) -> None:
    with pytest.raises(EmberError, match="did QEMU start"):
        QmpClient.connect(tmp_path / "absent.sock", 60, alive=lambda: False)

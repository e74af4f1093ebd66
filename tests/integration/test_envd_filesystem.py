"""filesystem.Filesystem against the bundled agent: stat, list, create, move, remove, watch."""

from __future__ import annotations

import os
import pwd
import threading
from pathlib import Path
from typing import Any

import pytest
from envd_agent import Agent, stream_json

from ember.envd import EnvdClient, EnvdError, FileType


def test_stat_describes_a_file(client: EnvdClient, tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_bytes(b"12345")
    target.chmod(0o640)
    entry = client.stat(str(target))
    assert (entry.name, entry.type, entry.path, entry.size_bytes) == ("f.txt", FileType.FILE, str(target), 5)
    assert (entry.mode, entry.permissions) == (0o640, "-rw-r-----")
    assert entry.owner == pwd.getpwuid(os.getuid()).pw_name
    assert entry.modified_time is not None
    assert abs(entry.modified_time.timestamp() - target.stat().st_mtime) < 1e-3


def test_stat_of_a_symlink_reports_its_target(client: EnvdClient, tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    entry = client.stat(str(tmp_path / "link"))
    assert (entry.type, entry.symlink_target) == (FileType.DIR, str(tmp_path / "dir"))


def test_relative_paths_and_tilde_start_at_the_users_home(client: EnvdClient) -> None:
    home = pwd.getpwnam("root").pw_dir
    assert client.stat(".").path == home
    assert client.stat("~").path == home


def test_missing_paths_are_not_found(client: EnvdClient, tmp_path: Path) -> None:
    for call in (client.stat, client.list_dir, client.remove):
        with pytest.raises(EnvdError) as caught:
            call(str(tmp_path / "missing"))
        assert caught.value.code == "not_found"


def test_list_dir_honours_depth(client: EnvdClient, tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "deep.txt").write_text("x")
    (tmp_path / "top.txt").write_text("y")
    assert [e.name for e in client.list_dir(str(tmp_path))] == ["a", "top.txt"]
    deeper = {e.path for e in client.list_dir(str(tmp_path), depth=3)}
    assert str(tmp_path / "a" / "b" / "deep.txt") in deeper


def test_list_dir_of_a_file_is_invalid_argument(client: EnvdClient, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(EnvdError) as caught:
        client.list_dir(str(tmp_path / "file"))
    assert caught.value.code == "invalid_argument"


def test_make_dir_creates_parents_and_reports_existing(client: EnvdClient, tmp_path: Path) -> None:
    assert client.make_dir(str(tmp_path / "x" / "y"))
    assert (tmp_path / "x" / "y").is_dir()
    assert not client.make_dir(str(tmp_path / "x" / "y"))


def test_move_renames_into_new_parents(client: EnvdClient, tmp_path: Path) -> None:
    (tmp_path / "src.txt").write_text("moved")
    entry = client.move(str(tmp_path / "src.txt"), str(tmp_path / "new" / "dst.txt"))
    assert entry.path == str(tmp_path / "new" / "dst.txt")
    assert (tmp_path / "new" / "dst.txt").read_text() == "moved"
    assert not (tmp_path / "src.txt").exists()


def test_remove_deletes_files_and_whole_trees(client: EnvdClient, tmp_path: Path) -> None:
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "f").write_text("x")
    (tmp_path / "file").write_text("x")
    client.remove(str(tmp_path / "tree"))
    client.remove(str(tmp_path / "file"))
    assert list(tmp_path.iterdir()) == []


def _create_soon(path: Path) -> None:
    threading.Timer(0.3, path.write_text, args=("new",)).start()


def test_watch_dir_sees_a_created_file_with_the_proto_codec(client: EnvdClient, tmp_path: Path) -> None:
    stream = client.stream(
        "filesystem.Filesystem/WatchDir", {"path": str(tmp_path), "include_entry": True}, "root", timeout_s=10
    )
    try:
        assert next(stream) == {"start": {}}
        _create_soon(tmp_path / "created.txt")
        event = next(message for message in stream if "filesystem" in message)["filesystem"]
    finally:
        stream.close()
    assert (event["name"], event["type"]) == ("created.txt", 1)
    assert event["entry"]["path"] == str(tmp_path / "created.txt")


def test_watch_dir_with_the_json_codec_ends_at_the_deadline(agent: Agent, tmp_path: Path) -> None:
    _create_soon(tmp_path / "created.txt")
    messages, trailer = stream_json(
        agent.url, "filesystem.Filesystem/WatchDir", {"path": str(tmp_path)}, **{"Connect-Timeout-Ms": "1500"}
    )
    events: list[Any] = [m["filesystem"] for m in messages if "filesystem" in m]
    assert messages[0] == {"start": {}}
    assert {"name": "created.txt", "type": "EVENT_TYPE_CREATE"} in events
    assert trailer["error"]["code"] == "deadline_exceeded"


def test_watcher_api_returns_events_since_the_last_call(client: EnvdClient, tmp_path: Path) -> None:
    watcher_id = client.unary("filesystem.Filesystem/CreateWatcher", {"path": str(tmp_path)})["watcher_id"]
    (tmp_path / "a").write_text("x")
    first = client.unary("filesystem.Filesystem/GetWatcherEvents", {"watcher_id": watcher_id})
    (tmp_path / "a").unlink()
    second = client.unary("filesystem.Filesystem/GetWatcherEvents", {"watcher_id": watcher_id})
    client.unary("filesystem.Filesystem/RemoveWatcher", {"watcher_id": watcher_id})
    assert first == {"events": [{"name": "a", "type": 1}]}
    assert second == {"events": [{"name": "a", "type": 3}]}
    with pytest.raises(EnvdError) as caught:
        client.unary("filesystem.Filesystem/GetWatcherEvents", {"watcher_id": watcher_id})
    assert caught.value.code == "not_found"

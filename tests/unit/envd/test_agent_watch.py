"""Polling directory watcher: which changes become which events."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ember.envd.agent.connect import Code, RpcError
from ember.envd.agent.watch import (
    EVENT_CHMOD,
    EVENT_CREATE,
    EVENT_REMOVE,
    EVENT_RENAME,
    EVENT_WRITE,
    DirWatcher,
)


def _events(watcher: DirWatcher) -> list[tuple[str, int]]:
    return [(event["name"], event["type"]) for event in watcher.poll()]


def test_create_write_chmod_rename_remove(tmp_path: Path) -> None:
    watcher = DirWatcher(str(tmp_path), recursive=False, include_entry=False)
    target = tmp_path / "f"
    target.write_text("a")
    assert _events(watcher) == [("f", EVENT_CREATE)]
    target.write_text("longer")
    assert _events(watcher) == [("f", EVENT_WRITE)]
    stat = target.stat()
    target.chmod(0o600)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _events(watcher) == [("f", EVENT_CHMOD)]
    target.rename(tmp_path / "g")
    assert _events(watcher) == [("f", EVENT_RENAME), ("g", EVENT_CREATE)]
    (tmp_path / "g").unlink()
    assert _events(watcher) == [("g", EVENT_REMOVE)]
    assert _events(watcher) == []


def test_recursive_watch_names_nested_paths(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    flat = DirWatcher(str(tmp_path), recursive=False, include_entry=False)
    deep = DirWatcher(str(tmp_path), recursive=True, include_entry=True)
    (tmp_path / "sub" / "n").write_text("x")
    assert ("sub/n", EVENT_CREATE) in _events(deep)
    assert ("sub/n", EVENT_CREATE) not in _events(flat)


def test_watching_a_missing_or_plain_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RpcError) as missing:
        DirWatcher(str(tmp_path / "none"), recursive=False, include_entry=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RpcError) as plain:
        DirWatcher(str(tmp_path / "file"), recursive=False, include_entry=False)
    assert (missing.value.code, plain.value.code) == (Code.NOT_FOUND, Code.INVALID_ARGUMENT)

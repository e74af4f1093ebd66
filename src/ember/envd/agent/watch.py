"""Directory watching by polling: the guest has no inotify binding in the standard library.

A watcher keeps a snapshot ``relative path -> (inode, mtime_ns, size, mode)`` and diffs it
against a fresh scan. Differences become ``filesystem.FilesystemEvent`` messages named by
path relative to the watched directory: new path -> CREATE, vanished path -> REMOVE (or
RENAME when its inode reappears elsewhere, followed by CREATE of the new name), changed
mtime or size -> WRITE, changed permission bits only -> CHMOD. A change that is undone
between two polls is not seen, and several writes between polls are one WRITE.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading

from .codec import Message
from .connect import Code, RpcError
from .filesystem import entry_info, os_call

EVENT_CREATE = 1
EVENT_WRITE = 2
EVENT_REMOVE = 3
EVENT_RENAME = 4
EVENT_CHMOD = 5
POLL_INTERVAL_S = 0.05

_Fingerprint = tuple[int, int, int, int]


class DirWatcher:
    """Events under one directory since the previous ``poll`` (or since creation)."""

    def __init__(self, root: str, recursive: bool, include_entry: bool) -> None:
        if not stat.S_ISDIR(os_call("watch", root, lambda: os.stat(root)).st_mode):
            raise RpcError(Code.INVALID_ARGUMENT, f"watch {root!r}: not a directory")
        self.root = root
        self._recursive = recursive
        self._include_entry = include_entry
        self._lock = threading.Lock()
        self._snapshot = self._scan()

    def _scan(self) -> dict[str, _Fingerprint]:
        found: dict[str, _Fingerprint] = {}
        pending = [""]
        while pending:
            relative = pending.pop()
            try:
                with os.scandir(os.path.join(self.root, relative)) as listing:
                    for item in listing:
                        name = os.path.join(relative, item.name)
                        try:
                            info = item.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        found[name] = (
                            info.st_ino,
                            info.st_mtime_ns,
                            info.st_size,
                            stat.S_IMODE(info.st_mode),
                        )
                        if self._recursive and stat.S_ISDIR(info.st_mode):
                            pending.append(name)
            except FileNotFoundError:
                if not relative:
                    raise RpcError(Code.NOT_FOUND, f"watched directory {self.root!r} was removed") from None
            except OSError:
                continue
        return found

    def poll(self) -> list[Message]:
        with self._lock:
            before, after = self._snapshot, self._scan()
            self._snapshot = after
        new_inodes = {after[name][0] for name in after.keys() - before.keys()}
        events: list[Message] = []
        for name in sorted(before.keys() - after.keys()):
            moved = before[name][0] in new_inodes
            events.append(self._event(name, EVENT_RENAME if moved else EVENT_REMOVE))
        for name in sorted(after.keys() - before.keys()):
            events.append(self._event(name, EVENT_CREATE))
        for name in sorted(before.keys() & after.keys()):
            old, new = before[name], after[name]
            if old[1:3] != new[1:3] or old[0] != new[0]:
                events.append(self._event(name, EVENT_WRITE))
            elif old[3] != new[3]:
                events.append(self._event(name, EVENT_CHMOD))
        return events

    def _event(self, name: str, event_type: int) -> Message:
        event: Message = {"name": name, "type": event_type}
        if self._include_entry and event_type not in (EVENT_REMOVE, EVENT_RENAME):
            with contextlib.suppress(RpcError):
                event["entry"] = entry_info(os.path.join(self.root, name))
        return event

"""``filesystem.Filesystem``: stat, list, create, move, remove and watch paths.

Paths are resolved for the calling user (``Authorization: Basic``): relative paths and
``~`` start at their home, and directories created on their behalf are theirs.
``WatchDir`` streams ``start``, then events as the poller finds them, with ``keepalive``
in silences; the ``CreateWatcher`` family keeps the same poller between calls. Both
refuse a directory on a network filesystem unless ``allow_network_mounts`` is set.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

from . import filesystem
from .codec import Message
from .connect import Call, Code, Method, RpcError, Shape, UnaryHandler
from .process_service import keepalive_interval_s
from .state import AgentState, User, resolve_path
from .watch import POLL_INTERVAL_S, DirWatcher

_PREFIX = "filesystem."


class FilesystemService:
    def __init__(self, state: AgentState) -> None:
        self._state = state
        self._lock = threading.Lock()
        self._watchers: dict[str, DirWatcher] = {}

    def methods(self) -> dict[str, Method]:
        def unary(name: str, handler: UnaryHandler) -> Method:
            return Method(f"{_PREFIX}{name}Request", f"{_PREFIX}{name}Response", Shape.UNARY, handler)

        return {
            "Stat": unary("Stat", self.stat),
            "MakeDir": unary("MakeDir", self.make_dir),
            "Move": unary("Move", self.move),
            "ListDir": unary("ListDir", self.list_dir),
            "Remove": unary("Remove", self.remove),
            "WatchDir": Method(
                "filesystem.WatchDirRequest",
                "filesystem.WatchDirResponse",
                Shape.SERVER_STREAM,
                self.watch_dir,
            ),
            "CreateWatcher": unary("CreateWatcher", self.create_watcher),
            "GetWatcherEvents": unary("GetWatcherEvents", self.get_watcher_events),
            "RemoveWatcher": unary("RemoveWatcher", self.remove_watcher),
        }

    def _user_path(self, call: Call, path: str) -> tuple[User, str]:
        user = self._state.resolve_user(call.username)
        return user, resolve_path(path, user)

    def stat(self, call: Call, request: Message) -> Message:
        _, path = self._user_path(call, request.get("path", ""))
        return {"entry": filesystem.entry_info(path)}

    def make_dir(self, call: Call, request: Message) -> Message:
        user, path = self._user_path(call, request.get("path", ""))
        return {"entry": filesystem.make_dir(path, user.uid, user.gid)}

    def move(self, call: Call, request: Message) -> Message:
        user, source = self._user_path(call, request.get("source", ""))
        _, destination = self._user_path(call, request.get("destination", ""))
        return {"entry": filesystem.move(source, destination, user.uid, user.gid)}

    def list_dir(self, call: Call, request: Message) -> Message:
        _, path = self._user_path(call, request.get("path", ""))
        return {"entries": filesystem.list_dir(path, int(request.get("depth", 1)))}

    def remove(self, call: Call, request: Message) -> Message:
        _, path = self._user_path(call, request.get("path", ""))
        filesystem.remove(path)
        return {}

    def _watcher(self, call: Call, request: Message) -> DirWatcher:
        _, path = self._user_path(call, request.get("path", ""))
        filesystem.check_watchable(path, bool(request.get("allow_network_mounts")))
        return DirWatcher(path, bool(request.get("recursive")), bool(request.get("include_entry")))

    def watch_dir(self, call: Call, request: Message) -> Iterator[Message]:
        watcher = self._watcher(call, request)
        return self._watch_stream(call, watcher)

    def _watch_stream(self, call: Call, watcher: DirWatcher) -> Iterator[Message]:
        yield {"start": {}}
        interval_s = keepalive_interval_s(call)
        last_sent = time.monotonic()
        while True:
            remaining_s = call.remaining_s()
            time.sleep(POLL_INTERVAL_S if remaining_s is None else min(POLL_INTERVAL_S, remaining_s))
            call.check_deadline()
            events = watcher.poll()
            for event in events:
                yield {"filesystem": event}
            if events or time.monotonic() - last_sent >= interval_s:
                if not events:
                    yield {"keepalive": {}}
                last_sent = time.monotonic()

    def create_watcher(self, call: Call, request: Message) -> Message:
        watcher = self._watcher(call, request)
        watcher_id = str(uuid.uuid4())
        with self._lock:
            self._watchers[watcher_id] = watcher
        return {"watcher_id": watcher_id}

    def _find(self, watcher_id: str) -> DirWatcher:
        with self._lock:
            watcher = self._watchers.get(watcher_id)
        if watcher is None:
            raise RpcError(Code.NOT_FOUND, f"watcher {watcher_id!r} not found: create one with CreateWatcher")
        return watcher

    def get_watcher_events(self, call: Call, request: Message) -> Message:
        return {"events": self._find(request.get("watcher_id", "")).poll()}

    def remove_watcher(self, call: Call, request: Message) -> Message:
        watcher_id = request.get("watcher_id", "")
        self._find(watcher_id)
        with self._lock:
            self._watchers.pop(watcher_id, None)
        return {}

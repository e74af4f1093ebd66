"""A bounded LRU of open read-only file descriptors, shared by the threads of one process.

Opening a file and checking its size costs more than reading a few KiB from the page cache,
so the chunk cache keeps the descriptors of recently read chunk files open. The hazard of
sharing raw descriptors between threads is closing one while another thread still reads
through it: the number could be reused by an unrelated ``open`` and the reader would get
that file's bytes. Here a descriptor is closed only once no reader holds it: eviction,
``discard`` and ``close`` retire an entry, and the last reader to release it closes it.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

from ember.errors import UsageError

DEFAULT_MAX_OPEN_FILES = 128


@dataclass(eq=False, slots=True)
class OpenFile:
    """One cached descriptor and how many readers hold it; mutated only under the cache lock."""

    fd: int
    readers: int = 0
    retired: bool = False


ChunkName = tuple[str, int]
"""(object key, chunk index): which file a descriptor reads."""


class OpenFiles:
    """Up to ``max_open`` descriptors by chunk name, least recently used evicted first.

    An evicted descriptor that a reader still holds stays open until that reader releases it.
    """

    def __init__(self, max_open: int = DEFAULT_MAX_OPEN_FILES) -> None:
        if max_open < 1:
            raise UsageError(f"max_open_files must be >= 1, got {max_open}: keep at least one file open")
        self._max_open = max_open
        self._lock = threading.Lock()
        self._entries: OrderedDict[ChunkName, OpenFile] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def acquire(self, name: ChunkName) -> OpenFile | None:
        """The open file called ``name``, held until ``release``; None when it is not open."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                return None
            self._entries.move_to_end(name)
            entry.readers += 1
            return entry

    def add(self, name: ChunkName, fd: int) -> OpenFile:
        """Take ownership of ``fd`` as ``name`` and hold it for the caller until ``release``.

        When another thread added ``name`` first, ``fd`` is closed and theirs is shared.
        """
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None:
                os.close(fd)
                self._entries.move_to_end(name)
            else:
                entry = self._entries[name] = OpenFile(fd)
                while len(self._entries) > self._max_open:
                    _, evicted = self._entries.popitem(last=False)
                    self._retire(evicted)
            entry.readers += 1
            return entry

    def release(self, entry: OpenFile) -> None:
        with self._lock:
            entry.readers -= 1
            if entry.retired and entry.readers == 0:
                os.close(entry.fd)

    def discard(self, name: ChunkName, entry: OpenFile) -> None:
        """Stop serving ``entry`` (its file went bad); a newer entry under ``name`` is kept."""
        with self._lock:
            if self._entries.get(name) is entry:
                del self._entries[name]
                self._retire(entry)

    def discard_object(self, key: str) -> None:
        """Stop serving every chunk of object ``key`` (it was replaced or deleted)."""
        with self._lock:
            for name in [name for name in self._entries if name[0] == key]:
                self._retire(self._entries.pop(name))

    def close(self) -> None:
        """Close every descriptor once its readers are done; later ``add`` calls still work."""
        with self._lock:
            for entry in self._entries.values():
                self._retire(entry)
            self._entries.clear()

    def _retire(self, entry: OpenFile) -> None:
        if entry.retired:
            return
        entry.retired = True
        if entry.readers == 0:
            os.close(entry.fd)

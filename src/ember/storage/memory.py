"""Storage held in a dict, for tests and demos; named stores are shared across a process.

``memory://name`` always opens the same store in one process, so code that reopens a
storage URL (the CLI, ``copy_build``) sees what an earlier opener wrote. Nothing persists
past the process.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import BinaryIO

from ember.errors import ObjectExists, ObjectNotFound, StorageError
from ember.storage.base import (
    COPY_BUFFER_SIZE,
    Storage,
    atomic_write,
    check_key,
    check_range,
    crc32c_of_bytes,
    writable_view,
)

_registry_lock = threading.Lock()
_registry: dict[str, MemoryStorage] = {}


class MemoryStorage(Storage):
    """Objects in a dict guarded by one lock; ``bytes`` values make every put atomic."""

    def __init__(self, name: str = "") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._objects: dict[str, bytes] = {}

    @property
    def url(self) -> str:
        return f"memory://{self._name}"

    def _object(self, key: str) -> bytes:
        with self._lock:
            data = self._objects.get(check_key(key))
        if data is None:
            raise ObjectNotFound(key, self.url)
        return data

    def get(self, key: str) -> bytes:
        return self._object(key)

    def put(self, key: str, data: bytes) -> None:
        frozen = bytes(data)
        with self._lock:
            self._objects[check_key(key)] = frozen

    def create_exclusive(self, key: str, data: bytes) -> None:
        frozen = bytes(data)
        with self._lock:
            if check_key(key) in self._objects:
                raise ObjectExists(key, self.url)
            self._objects[key] = frozen

    def put_file(self, key: str, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read upload source {path}: {exc}; check the path") from exc
        self.put(key, data)

    def get_to_file(self, key: str, path: Path) -> None:
        data = self._object(key)

        def fill(target: BinaryIO) -> None:
            view = memoryview(data)
            for start in range(0, len(data), COPY_BUFFER_SIZE):
                target.write(view[start : start + COPY_BUFFER_SIZE])

        atomic_write(path, fill)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        return self._object(key)[offset : offset + length]

    def read_range_into(self, key: str, offset: int, buffer: bytearray | memoryview) -> int:
        view = writable_view(buffer)
        check_range(offset, len(view))
        data = self._object(key)
        count = max(0, min(len(view), len(data) - offset))
        view[:count] = memoryview(data)[offset : offset + count]
        return count

    def size(self, key: str) -> int:
        return len(self._object(key))

    def exists(self, key: str) -> bool:
        with self._lock:
            return check_key(key) in self._objects

    def list(self, prefix: str) -> list[str]:
        with self._lock:
            return sorted(key for key in self._objects if key.startswith(prefix))

    def delete_prefix(self, prefix: str) -> int:
        with self._lock:
            doomed = [key for key in self._objects if key.startswith(prefix)]
            for key in doomed:
                del self._objects[key]
        return len(doomed)

    def crc32c(self, key: str) -> int | None:
        return crc32c_of_bytes(self._object(key))


def open_memory_storage(name: str) -> MemoryStorage:
    """The process-wide store called ``name``, created empty on first use."""
    with _registry_lock:
        store = _registry.get(name)
        if store is None:
            store = _registry[name] = MemoryStorage(name)
        return store

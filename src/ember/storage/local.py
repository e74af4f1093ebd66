"""Storage in a local directory: object ``{build}/{file}`` is the file ``<root>/{build}/{file}``.

Layout (the same relative keys as a bucket, facts file 1.1)::

    <root>/
      <build uuid>/
        memfile  memfile.header  rootfs.ext4  rootfs.ext4.header  snapfile  metadata.json
        .memfile.3f9a0c1e-41237-8812345.k3j2x9ab.tmp   <- an upload in flight (writer's boot id,
                                 pid and start time, see ``temporaries``); hidden from list(),
                                 renamed when complete

Every write lands in a temporary sibling, is fsynced, then ``os.replace``d over the key,
so readers in any process see the old file or the new one, never part of it. Objects are
created 0600 and folders 0700: a memfile is a guest's RAM, for its owner's eyes only.

Ranged reads keep up to ``max_open_files`` descriptors open (an LRU): opening the object
for every read would cost more than the read. A layered device read (``BuildFile``) goes
further: once an object was read it is mapped whole (``mapped.py``, up to ``max_mapped``
objects) and the native loop copies its segments from memory, with no call here at all.
Writes and deletes through this instance drop the descriptors and maps of the objects they
touch. Build objects are never rewritten in place (a new version is a new file renamed over
the key), so a descriptor or map kept open reads one consistent version; a replacement made
by another process is seen once its descriptor or map is evicted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from ember.errors import ObjectExists, ObjectNotFound, StorageError
from ember.storage.base import (
    COPY_BUFFER_SIZE,
    OBJECT_MODE,
    Storage,
    atomic_write,
    check_key,
    check_range,
    crc32c_of_file,
    is_temporary_name,
    make_directories,
    preadv_full,
    writable_view,
)
from ember.storage.mapped import DEFAULT_MAX_MAPPED, ChunkTable, MappedFiles
from ember.storage.open_files import DEFAULT_MAX_OPEN_FILES, OpenFiles

_T = TypeVar("_T")


class LocalStorage(Storage):
    """A directory used as an object store; the root need not exist until the first put."""

    def __init__(
        self,
        root: Path,
        *,
        max_open_files: int = DEFAULT_MAX_OPEN_FILES,
        max_mapped: int = DEFAULT_MAX_MAPPED,
    ) -> None:
        self._root = root.absolute()
        self._files = OpenFiles(max_open_files)
        self._max_mapped = max_mapped
        self._mapped: MappedFiles | None = None
        self._mapped_lock = threading.Lock()
        weakref.finalize(self, self._files.close)

    def close(self) -> None:
        """Close the descriptors and drop the maps kept for reads; the storage stays usable and
        reopens on demand (a map still being read goes when its reader is done)."""
        self._files.close()
        if self._mapped is not None:
            self._mapped.close()

    def mapped_files(self) -> MappedFiles:
        """The objects mapped for native readers; made on first use (needs the compiled loop)."""
        with self._mapped_lock:
            if self._mapped is None:
                self._mapped = MappedFiles(max_mapped=self._max_mapped)
            return self._mapped

    def map_range(self, key: str, offset: int, length: int) -> ChunkTable | None:
        """The chunk table of ``key`` with the whole object mapped (whatever the range), when it can be.

        Called after a read through ``read_range_into`` succeeded, so the object exists; one
        that cannot be opened or mapped any more stays on the descriptor path.
        """
        mapped = self.mapped_files()
        if not mapped.is_mapped(key, 0):
            mapped.map_file(key, 0, self._path(key), None, 0)
        return mapped.table(key)

    def _discard(self, key: str) -> None:
        """Forget the descriptors and maps of ``key``: it is being replaced or deleted."""
        self._files.discard_object(key)
        if self._mapped is not None:
            self._mapped.discard_object(key)

    @property
    def root(self) -> Path:
        return self._root

    @property
    def url(self) -> str:
        return self._root.as_uri()

    def path_of(self, key: str) -> Path:
        """The file holding object ``key`` (it may not exist), for readers that keep it open."""
        return self._path(key)

    def _path(self, key: str) -> Path:
        return self._root / check_key(key)

    def _missing(self, key: str, exc: OSError) -> StorageError:
        if isinstance(exc, FileNotFoundError | NotADirectoryError | IsADirectoryError):
            return ObjectNotFound(key, self.url)
        return StorageError(f"cannot read {key!r} in {self.url}: {exc}; check the directory permissions")

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            raise self._missing(key, exc) from exc

    def put(self, key: str, data: bytes) -> None:
        self._discard(key)
        try:
            atomic_write(self._path(key), lambda target: target.write(data))
        finally:
            self._discard(key)

    def create_exclusive(self, key: str, data: bytes) -> None:
        """A temporary hard-linked to the key: the link fails if the key exists (``atomic_write``)."""
        self._discard(key)
        try:
            atomic_write(self._path(key), lambda target: target.write(data), exclusive=True)
        except FileExistsError as exc:
            raise ObjectExists(key, self.url) from exc
        finally:
            self._discard(key)

    def put_file(self, key: str, path: Path) -> None:
        self._discard(key)
        try:
            with path.open("rb") as source:
                atomic_write(self._path(key), lambda target: _copy(source, target))
        except OSError as exc:
            raise StorageError(f"cannot read upload source {path}: {exc}; check the path") from exc
        finally:
            self._discard(key)

    def move_file(self, key: str, path: Path) -> None:
        """Rename ``path`` into place after making it durable; copy when it is on another file system."""
        target = self._path(key)
        self._discard(key)
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fchmod(fd, OBJECT_MODE)
                os.fsync(fd)
            finally:
                os.close(fd)
            make_directories(target.parent)
            os.replace(path, target)
            self._discard(key)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                self.put_file(key, path)
                return
            message = f"cannot store {path} as {target}: {exc}; check the path and permissions"
            raise StorageError(message) from exc

    def get_to_file(self, key: str, path: Path) -> None:
        try:
            with self._path(key).open("rb") as source:
                atomic_write(path, lambda target: _copy(source, target))
        except OSError as exc:
            raise self._missing(key, exc) from exc

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        return self._with_open_file(key, lambda fd: os.pread(fd, length, offset) if length else b"")

    def read_range_into(self, key: str, offset: int, buffer: bytearray | memoryview) -> int:
        view = writable_view(buffer)
        check_range(offset, len(view))
        return self._with_open_file(key, lambda fd: preadv_full(fd, view, offset))

    def _with_open_file(self, key: str, read: Callable[[int], _T]) -> _T:
        """``read`` on a kept-open descriptor of ``key``, opened (and kept) when it is not."""
        name = (key, 0)
        entry = self._files.acquire(name)
        if entry is None:
            try:
                fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise self._missing(key, exc) from exc
            entry = self._files.add(name, fd)
        try:
            return read(entry.fd)
        except OSError as exc:
            self._files.discard(name, entry)
            raise self._missing(key, exc) from exc
        finally:
            self._files.release(entry)

    def size(self, key: str) -> int:
        try:
            path = self._path(key)
            if path.is_dir():
                raise ObjectNotFound(key, self.url)
            return path.stat().st_size
        except OSError as exc:
            raise self._missing(key, exc) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        # Walk only the deepest directory the prefix pins down, not the whole root.
        directory = self._root / check_key(prefix.rpartition("/")[0]) if "/" in prefix else self._root
        keys: list[str] = []
        for current, dirs, files in os.walk(directory):
            dirs.sort()
            relative = Path(current).relative_to(self._root).as_posix()
            base = "" if relative == "." else relative + "/"
            keys.extend(base + name for name in files if not is_temporary_name(name))
        return sorted(key for key in keys if key.startswith(prefix))

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            self._discard(key)
            try:
                self._path(key).unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(f"cannot delete {key!r} in {self.url}: {exc}; check permissions") from exc
            finally:
                self._discard(key)
        for directory in sorted({self._path(key).parent for key in keys}, key=lambda p: -len(p.parts)):
            _remove_empty_dirs(directory, self._root)
        return len(keys)

    def crc32c(self, key: str) -> int | None:
        try:
            return crc32c_of_file(self._path(key))
        except OSError as exc:
            raise self._missing(key, exc) from exc


def _copy(source: BinaryIO, target: BinaryIO) -> None:
    shutil.copyfileobj(source, target, COPY_BUFFER_SIZE)


def _remove_empty_dirs(directory: Path, root: Path) -> None:
    """Remove ``directory`` and its parents up to (not including) ``root`` while they are empty."""
    while directory != root and root in directory.parents:
        with contextlib.suppress(OSError):
            directory.rmdir()
        if directory.exists():
            return
        directory = directory.parent

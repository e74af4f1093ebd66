"""The one storage interface every backend implements, and the helpers they share.

A key names one object: ``{buildId}/{file}`` (facts file 1.1). Keys use ``/`` as the only
separator, never start with ``/`` and never contain ``.`` or ``..`` components, so a key
can be joined under a local directory without escaping it.

Guarantees every backend keeps:

* puts are atomic: a reader sees the old object or the whole new one, never a prefix;
* ``create_exclusive`` stores an object only where none exists, so of writers racing for one
  key (two processes given the same build id) exactly one succeeds;
* ``get_to_file`` writes a temporary name next to the destination and renames it into
  place, so a failed download leaves no file at the destination path;
* ``read_range`` returns fewer bytes than asked only when the object ends first, and
  ``read_range_into`` likewise fills the whole buffer unless the object ends first;
* the only exceptions that escape are ``ember.errors`` ones: a missing object raises
  ``ObjectNotFound``; an endpoint that cannot be reached, a missing bucket or refused
  credentials raise ``StorageUnreachable``; anything else raises ``StorageError``.
"""

from __future__ import annotations

import abc
import builtins
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import google_crc32c

from ember.errors import ObjectNotFound, StorageError, UsageError
from ember.storage.temporaries import remove_quietly, temporary_prefix

COPY_BUFFER_SIZE = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its key, its size, and when it was last written (None if unknown)."""

    key: str
    size_bytes: int
    modified: float | None


class Storage(abc.ABC):
    """An object store addressed by ``{buildId}/{file}`` keys; safe to share between threads."""

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """Where this storage lives, for messages (``gs://bucket/prefix``, ``file:///dir``)."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically, replacing any previous object."""

    @abc.abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file without holding it in memory; atomic like ``put``."""

    def move_file(self, key: str, path: Path) -> None:
        """Store a scratch file its caller is done with; atomic like ``put``; ``path`` may be gone after.

        Stores that can take the file over (a local directory on the same file system)
        rename it into place instead of copying: a pause stores hundreds of MiB of memory
        diff that nobody reads from the scratch directory again. Others upload it.
        """
        self.put_file(key, path)

    @abc.abstractmethod
    def create_exclusive(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` only if no object has that key, atomically across processes.

        Raises ``ObjectExists`` when one does: of several writers racing for one key, exactly
        one succeeds. This is how a writer claims a build id before it uploads anything.
        """

    @abc.abstractmethod
    def get_to_file(self, key: str, path: Path) -> None:
        """Download the object to ``path`` without holding it in memory; all or nothing."""

    @abc.abstractmethod
    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``; shorter only where the object ends."""

    def read_range_into(self, key: str, offset: int, buffer: bytearray | memoryview) -> int:
        """Fill ``buffer`` with the object's bytes from ``offset``; returns how many were filled.

        Fewer than ``len(buffer)`` only where the object ends; bytes of ``buffer`` past that
        count are left as they were. Backends that can read straight into memory override
        this; the default costs one extra copy through ``read_range``.
        """
        view = writable_view(buffer)
        data = self.read_range(key, offset, len(view))
        view[: len(data)] = data
        return len(data)

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """Object size in bytes."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the object exists (a missing bucket is an error, not ``False``)."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix`` (plain string prefix, not a directory), sorted."""

    def list_objects(self, prefix: str) -> builtins.list[ObjectInfo]:
        """``list`` with each object's size and last modification (seconds since the epoch, or None).

        Garbage collection ages builds by it. Backends whose listings carry both (buckets,
        whose list calls return them) override this; the default asks for each size and knows
        no times.
        """
        found = []
        for key in self.list(prefix):
            try:
                found.append(ObjectInfo(key, self.size(key), None))
            except ObjectNotFound:
                continue
        return found

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix``; returns how many."""

    @abc.abstractmethod
    def crc32c(self, key: str) -> int | None:
        """CRC32C (Castagnoli) of the object, or ``None`` when the backend does not know it."""


def check_key(key: str) -> str:
    """Reject keys that could escape a local root or that no bucket would store as written."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\0" in key:
        raise UsageError(
            f"invalid storage key {key!r}: use '<build id>/<file>' with no empty, '.' or '..' parts"
        )
    return key


MAX_OBJECT_END = (1 << 63) - 1
"""The last byte offset a read can reach: file offsets (``pread``, ``off_t``) are signed 64-bit."""


def check_range(offset: int, length: int) -> None:
    """Reject ranges no backend can read before they reach one that would misread or overflow on them."""
    if offset < 0 or length < 0:
        raise UsageError(f"invalid range offset={offset} length={length}: both must be >= 0")
    if offset + length > MAX_OBJECT_END:
        raise UsageError(
            f"invalid range offset={offset} length={length}: it ends past byte 2^63 - 1, the largest "
            "offset storage can address; an offset this large comes from a corrupt header"
        )


def writable_view(buffer: bytearray | memoryview) -> memoryview:
    """``buffer`` as a flat byte view, rejecting read-only memory before any I/O happens."""
    view = memoryview(buffer)
    if view.readonly or not view.c_contiguous:
        raise UsageError(
            "reading into a buffer needs writable, contiguous memory: pass a bytearray or a slice of one"
        )
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def preadv_full(fd: int, view: memoryview, offset: int) -> int:
    """Read into ``view`` from ``offset`` of ``fd`` until it is full or the file ends."""
    filled = 0
    while filled < len(view):
        count = os.preadv(fd, [view[filled:]], offset + filled)
        if count == 0:
            break
        filled += count
    return filled


def crc32c_of_file(path: Path) -> int:
    """CRC32C of a local file, streamed so multi-GiB files stay out of memory."""
    crc = 0
    with path.open("rb") as source:
        while chunk := source.read(COPY_BUFFER_SIZE):
            crc = int(google_crc32c.extend(crc, chunk))
    return crc


def crc32c_of_bytes(data: bytes) -> int:
    """CRC32C of an in-memory buffer."""
    return int(google_crc32c.value(data))


OBJECT_MODE = 0o600
"""Stored objects are private to their owner: a memfile or snapfile is a guest's RAM and state."""
DIRECTORY_MODE = 0o700
"""Folders a store creates (a build's folder, the chunk cache's) are private for the same reason."""


def make_directories(directory: Path) -> None:
    """Create ``directory`` and its missing parents as ``DIRECTORY_MODE``; existing ones keep their mode.

    ``Path.mkdir(parents=True)`` would give the parents the umask's default (0755), which
    lists the builds of a private store to every local user.
    """
    missing: list[Path] = []
    current = directory
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=DIRECTORY_MODE)
        except FileExistsError:
            if not path.is_dir():
                raise
            continue
        # mkdir's mode is masked by the umask: set it exactly, so a strict umask (0277) cannot
        # leave a folder its owner cannot write into.
        os.chmod(path, DIRECTORY_MODE)


def atomic_write(
    path: Path, fill: Callable[[BinaryIO], object], *, fsync: bool = True, exclusive: bool = False
) -> None:
    """Write ``path`` through a temporary sibling and rename it into place.

    ``fill`` writes the content to the open temporary file. If it raises, the temporary
    file is removed and the exception propagates, so ``path`` is either untouched or the
    complete new content: never a torn file. ``fsync`` makes the content durable before
    the rename (skip it only for caches that can refetch). The temporary's name says which
    process wrote it (``temporaries``), so one left by a killed writer can be swept later.

    ``exclusive`` hard-links the temporary to ``path`` instead of renaming it over it: the
    link fails when ``path`` exists, in any process on any host sharing the file system, so
    exactly one of several writers creates the file; the others get ``FileExistsError``.
    """
    directory = path.parent
    try:
        make_directories(directory)
        fd, temp_name = tempfile.mkstemp(prefix=temporary_prefix(path.name), suffix=".tmp", dir=directory)
    except OSError as exc:
        raise StorageError(f"cannot create a file in {directory}: {exc}; check permissions") from exc
    try:
        os.fchmod(fd, OBJECT_MODE)
        with os.fdopen(fd, "wb") as target:
            fill(target)
            target.flush()
            if fsync:
                os.fsync(target.fileno())
        if exclusive:
            _link_exclusive(temp_name, path)
            remove_quietly(temp_name)
        else:
            os.replace(temp_name, path)
    except BaseException as exc:
        remove_quietly(temp_name)
        if isinstance(exc, _ExclusiveLinkFailed):
            raise FileExistsError(exc.errno, exc.strerror, str(path)) from None
        if isinstance(exc, OSError):
            raise StorageError(f"cannot write {path}: {exc}; check permissions and free space") from exc
        raise


class _ExclusiveLinkFailed(FileExistsError):
    """The exclusive link found ``path`` taken (told apart from any other FileExistsError)."""


def _link_exclusive(temp_name: str, path: Path) -> None:
    """Link the finished temporary to ``path``; ``FileExistsError`` if another file got there first.

    NFS may report EEXIST for a link whose first transmission succeeded (the reply was
    lost and the retransmission found the name taken): the temporary's link count tells.
    """
    try:
        os.link(temp_name, path)
    except FileExistsError as exc:
        if os.stat(temp_name).st_nlink != 2:
            raise _ExclusiveLinkFailed(exc.errno, exc.strerror) from exc


def is_temporary_name(name: str) -> bool:
    """Whether a file name is an in-flight ``atomic_write`` temporary, hidden from listings."""
    return name.startswith(".") and name.endswith(".tmp")

"""Every object of a storage with its size and modification time, grouped by build folder.

``Storage.list`` gives keys only, and gc needs two more facts per object: how many bytes it
holds (the plan's table) and when it last changed (the grace period). Where they come from:

==============  =============================================================================
backend         size and time
==============  =============================================================================
LocalStorage    ``lstat`` of each file (mtime). In-flight ``atomic_write`` temporaries,
                hidden from ``list``, are reported apart (``BuildFolder.hidden``) and count
                as activity, as does the folder's own mtime: it changes whenever an entry is
                created, renamed into it or removed, so a file moved in by ``move_file``
                (which keeps the scratch file's older mtime) still makes the folder young
others          their ``Storage.list_objects``: GCS and S3 listings carry ``size`` and
                ``updated`` / ``LastModified`` (whole seconds on S3); a backend without an
                override gives sizes one by one and no times (``modified`` is None), which
                only makes gc keep more: an unknown age never passes a grace period
==============  =============================================================================

A build folder is a first-level folder whose name is a build id in canonical form; keys
outside such folders are counted (``Listing.ignored``) and never touched.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ember.errors import EmberError, StorageError
from ember.storage import CLAIM, METADATA, LocalStorage, Storage
from ember.storage.base import is_temporary_name


@dataclass(frozen=True)
class StoredObject:
    """One object: its key, size (None when unknown) and last change (POSIX seconds, None when unknown)."""

    key: str
    size_bytes: int | None
    modified: float | None

    @property
    def name(self) -> str:
        """The object's name inside its build folder (``memfile``, ``metadata.json``)."""
        return self.key.partition("/")[2]


@dataclass(frozen=True)
class BuildFolder:
    """The objects under ``{build}/`` at one moment; ``hidden`` are a local store's in-flight temporaries."""

    build_id: uuid.UUID
    objects: tuple[StoredObject, ...]
    hidden: tuple[StoredObject, ...] = ()
    folder_modified: float | None = None
    times_known: bool = True

    @property
    def prefix(self) -> str:
        return f"{self.build_id}/"

    def _named(self, name: str) -> StoredObject | None:
        key = self.prefix + name
        return next((item for item in self.objects if item.key == key), None)

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(item.key for item in self.objects)

    @property
    def complete(self) -> bool:
        """Whether metadata.json exists: the rule every reader of a build applies."""
        return self._named(METADATA) is not None

    @property
    def metadata(self) -> StoredObject | None:
        return self._named(METADATA)

    @property
    def claim(self) -> StoredObject | None:
        """The ``.ember-claim`` marker of a writer that owns (or owned) the build id."""
        return self._named(CLAIM)

    @property
    def size_bytes(self) -> int | None:
        sizes = [item.size_bytes for item in self.objects]
        return None if any(size is None for size in sizes) else sum(size or 0 for size in sizes)

    @property
    def newest(self) -> float | None:
        """The last change to anything in the folder; None when the backend does not say."""
        if not self.times_known:
            return None
        times = [item.modified for item in (*self.objects, *self.hidden)]
        if self.folder_modified is not None:
            times.append(self.folder_modified)
        if any(moment is None for moment in times):
            return None
        return max((moment for moment in times if moment is not None), default=None)

    def fingerprint(self) -> tuple[tuple[str, int | None, float | None], ...]:
        """What must be unchanged for a planned deletion to go ahead (every object, hidden ones too)."""
        return tuple(
            sorted((item.key, item.size_bytes, item.modified) for item in (*self.objects, *self.hidden))
        )


@dataclass(frozen=True)
class Listing:
    """A storage's build folders at one moment, and how many keys lay outside any."""

    folders: dict[uuid.UUID, BuildFolder]
    ignored: tuple[str, ...] = ()
    times_known: bool = True


def build_folder_id(name: str) -> uuid.UUID | None:
    """The build id a first-level folder name spells in canonical form, or None."""
    try:
        build_id = uuid.UUID(name)
    except ValueError:
        return None
    return build_id if str(build_id) == name else None


def list_storage(storage: Storage, prefix: str = "") -> Listing:
    """Every object under ``prefix`` (the whole storage, or one ``{build}/``) grouped by build folder."""
    objects, hidden, folder_times, times_known = _lister(storage)(prefix)
    grouped: dict[uuid.UUID, list[StoredObject]] = {}
    grouped_hidden: dict[uuid.UUID, list[StoredObject]] = {}
    ignored: list[str] = []
    known: dict[str, uuid.UUID | None] = {}
    for target, item in [(grouped, o) for o in objects] + [(grouped_hidden, o) for o in hidden]:
        folder, slash, _ = item.key.partition("/")
        if folder not in known:
            known[folder] = build_folder_id(folder)
        build_id = known[folder] if slash else None
        if build_id is None:
            if target is grouped:
                ignored.append(item.key)
            continue
        target.setdefault(build_id, []).append(item)
    folders: dict[uuid.UUID, BuildFolder] = {}
    for build_id in sorted(grouped.keys() | grouped_hidden.keys() | _ids(folder_times)):
        folders[build_id] = BuildFolder(
            build_id,
            tuple(sorted(grouped.get(build_id, ()), key=lambda item: item.key)),
            tuple(sorted(grouped_hidden.get(build_id, ()), key=lambda item: item.key)),
            folder_times.get(str(build_id)),
            times_known,
        )
    return Listing(folders, tuple(sorted(ignored)), times_known)


def list_folder(storage: Storage, build_id: uuid.UUID) -> BuildFolder:
    """The objects of one build folder now (empty when it is gone)."""
    listing = list_storage(storage, f"{build_id}/")
    return listing.folders.get(build_id) or BuildFolder(build_id, (), (), None, listing.times_known)


def _ids(folder_times: dict[str, float]) -> set[uuid.UUID]:
    return {build_id for name in folder_times if (build_id := build_folder_id(name)) is not None}


_Lister = Callable[[str], tuple[list[StoredObject], list[StoredObject], dict[str, float], bool]]


def _lister(storage: Storage) -> _Lister:
    if isinstance(storage, LocalStorage):
        return lambda prefix: _local(storage, prefix)
    if type(storage).list_objects is not Storage.list_objects:
        return lambda prefix: (_provided(storage, prefix), [], {}, True)
    return lambda prefix: (_plain(storage, prefix), [], {}, False)


def _provided(storage: Storage, prefix: str) -> list[StoredObject]:
    return [StoredObject(item.key, item.size_bytes, item.modified) for item in storage.list_objects(prefix)]


def _plain(storage: Storage, prefix: str) -> list[StoredObject]:
    """Keys from ``list``, sizes one by one; an object gone in between is left out."""
    found = []
    for key in storage.list(prefix):
        try:
            size_bytes = storage.size(key)
        except EmberError:
            if storage.exists(key):
                raise
            continue
        found.append(StoredObject(key, size_bytes, None))
    return found


def _local(
    storage: LocalStorage, prefix: str
) -> tuple[list[StoredObject], list[StoredObject], dict[str, float], bool]:
    """Walk the deepest folder the prefix names; stat every file, temporaries included."""
    top = prefix.rpartition("/")[0]
    objects: list[StoredObject] = []
    hidden: list[StoredObject] = []
    folder_times: dict[str, float] = {}
    pending = [top]
    while pending:
        relative = pending.pop()
        base = relative + "/" if relative else ""
        directory = os.path.join(storage.root, relative) if relative else str(storage.root)
        try:
            with os.scandir(directory) as entries:
                found = list(entries)
            if base.count("/") == 1:
                folder_times[relative] = os.lstat(directory).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise StorageError(f"cannot list {directory}: {exc}; check the directory permissions") from exc
        for entry in found:
            key = base + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if key.startswith(prefix) or prefix.startswith(key + "/"):
                        pending.append(key)
                    continue
                status = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(status.st_mode) or not key.startswith(prefix):
                continue
            item = StoredObject(key, status.st_size, status.st_mtime)
            (hidden if is_temporary_name(entry.name) else objects).append(item)
    return objects, hidden, folder_times, True

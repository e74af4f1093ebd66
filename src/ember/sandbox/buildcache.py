"""A node's cache of ``BuildInfo``, bounded in memory and on disk, as the original's template cache.

A daemon resumes builds for weeks; keeping every build it ever resumed (its ``BuildInfo``
and, with a remote store, the snapfile downloaded to the template cache) would grow memory
and disk without bound. So, as the original (template cache keyed by build id, TTL 25 h
since last access, extended while sandboxes of the build may run):

* an entry goes ``ttl_s`` after its last use, and the least recently used go first while
  there are more than ``max_builds``; an entry a running sandbox of the node uses is never
  evicted (nor the one just used), and its TTL counts from when the last such sandbox ended
  (``touch``);
* evicting an entry removes its downloaded snapfile folder; with a local store there is no
  download (the snapfile is the store's own object) and nothing is ever deleted;
* an entry is confirmed again against the store every ``recheck_s``: a build ``ember gc``
  deleted answers "not found" (``BuildNotFound``) instead of starting a sandbox process that
  fails on a missing object, and its download goes.

``sweep_downloads`` clears what an earlier run left in the template cache: downloads unused
for longer than the TTL (by mtime: ``get`` refreshes it on every use, so any process on the
host sharing the folder keeps what it uses) and folders a killed download left half-written.
``sweep_leftovers`` does the same while the node runs, for downloads the cache does not hold.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ember.errors import StorageError
from ember.sandbox.errors import BuildNotFound
from ember.sandbox.records import BuildInfo
from ember.storage import sweep_stale_temporaries
from ember.storage.paths import SNAPFILE

DEFAULT_TTL_S = 25 * 3600.0
"""The original's template cache TTL since last access."""

DEFAULT_MAX_BUILDS = 512
"""Over twice a node's 200 sandboxes (``MAX_SANDBOXES``), each possibly of its own build, so a
full node never reloads a build it runs; a ``BuildInfo`` is a few KiB and a snapfile typically
under a few MiB, so the cache stays within a few GiB of disk at worst."""

DEFAULT_RECHECK_S = 60.0
"""A deleted build is noticed within this long; a hot build costs the store one existence check
per minute."""

_log = logging.getLogger(__name__)


@dataclass
class _Entry:
    info: BuildInfo
    used: float
    confirmed: float


class BuildCache:
    """See the module docstring; ``downloads`` is the template cache folder, None for a local store.

    ``load`` fetches a build (raising ``BuildNotFound`` for one the store does not have),
    ``exists`` asks the store itself, past any chunk cache, whether the build is still there,
    ``in_use`` names the builds the node's running sandboxes use.
    """

    def __init__(
        self,
        load: Callable[[uuid.UUID], BuildInfo],
        exists: Callable[[uuid.UUID], bool],
        in_use: Callable[[], set[uuid.UUID]],
        downloads: Path | None,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_builds: int = DEFAULT_MAX_BUILDS,
        recheck_s: float = DEFAULT_RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._exists = exists
        self._in_use = in_use
        self.downloads = downloads
        self.ttl_s = ttl_s
        self.max_builds = max_builds
        self.recheck_s = recheck_s
        self._clock = clock
        self._entries: OrderedDict[uuid.UUID, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._build_locks: dict[uuid.UUID, tuple[threading.Lock, int]] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, build_id: object) -> bool:
        with self._lock:
            return build_id in self._entries

    def get(self, build_id: uuid.UUID) -> BuildInfo:
        """The build's ``BuildInfo``: cached, confirmed again when due, else loaded; then a sweep."""
        with self._build_lock(build_id):
            now = self._clock()
            with self._lock:
                entry = self._entries.get(build_id)
            if entry is not None and not self._still_valid(entry, now):
                with self._lock:
                    self._entries.pop(build_id, None)
                entry = None
            if entry is None:
                try:
                    entry = _Entry(self._load(build_id), now, now)
                except BuildNotFound:
                    self._remove_download(build_id)
                    raise
            with self._lock:
                entry.used = now
                self._entries[build_id] = entry
                self._entries.move_to_end(build_id)
            if self.downloads is not None:
                with contextlib.suppress(OSError):
                    os.utime(entry.info.snapfile)
        self.sweep()
        return entry.info

    def _still_valid(self, entry: _Entry, now: float) -> bool:
        if self.downloads is not None and not entry.info.snapfile.is_file():
            return False  # another process's sweep or a hand removed the download
        if now - entry.confirmed < self.recheck_s:
            return True
        try:
            if not self._exists(entry.info.build_id):
                return False
        except StorageError as exc:  # an unreachable store must not fail resumes the cache can serve
            _log.warning("cannot confirm build %s is still in storage: %s", entry.info.build_id, exc)
            return True
        entry.confirmed = now
        return True

    def touch(self, build_id: uuid.UUID) -> None:
        """Count the entry's TTL from now: its last sandbox ended."""
        with self._lock:
            entry = self._entries.get(build_id)
            if entry is not None:
                entry.used = self._clock()
                self._entries.move_to_end(build_id)

    def forget(self, build_id: uuid.UUID) -> None:
        """Drop the entry (not its download) so the next ``get`` loads the build again."""
        with self._lock:
            self._entries.pop(build_id, None)

    def sweep(self) -> list[uuid.UUID]:
        """Evict what is past its TTL, then the least recently used beyond ``max_builds``; the evicted."""
        in_use = self._in_use()
        now = self._clock()
        with self._lock:
            idle = [build_id for build_id in self._entries if build_id not in in_use]
            evicted = [build_id for build_id in idle if now - self._entries[build_id].used > self.ttl_s]
            beyond = len(self._entries) - len(evicted) - self.max_builds
            if beyond > 0:  # never the newest: the build a ``get`` is about to hand out
                newest = next(reversed(self._entries))
                spare = [build_id for build_id in idle if build_id not in evicted and build_id != newest]
                evicted += spare[:beyond]
            for build_id in evicted:
                del self._entries[build_id]
        for build_id in evicted:
            with self._build_lock(build_id):
                self._remove_download(build_id)
        return evicted

    def sweep_leftovers(self) -> list[Path]:
        """``sweep_downloads`` the template cache, sparing cached and in-use builds; the removed.

        Catches downloads the cache never held or let go of without removing: a checkpoint's
        (its sandbox process loads the new build itself), a forgotten build's never used again.
        """
        if self.downloads is None:
            return []
        in_use = self._in_use()
        removed = []
        for folder in _build_folders(self.downloads):
            build_id = uuid.UUID(folder.name)
            with self._build_lock(build_id):
                if (
                    build_id not in self
                    and build_id not in in_use
                    and _sweep_folder(folder, self.ttl_s, time.time())
                ):
                    removed.append(folder)
        _log_removed(self.downloads, removed, self.ttl_s)
        return removed

    def _remove_download(self, build_id: uuid.UUID) -> None:
        """Remove the build's snapfile folder, unless it came back or a sandbox uses it; holding its lock."""
        if self.downloads is None or build_id in self or build_id in self._in_use():
            return
        folder = self.downloads / str(build_id)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
            _log.debug("template cache: removed the snapfile of build %s", build_id)

    @contextlib.contextmanager
    def _build_lock(self, build_id: uuid.UUID) -> Iterator[None]:
        """One build's loads and removals in turn; the lock lives only while someone holds or awaits it."""
        with self._lock:
            lock, holders = self._build_locks.get(build_id, (threading.Lock(), 0))
            self._build_locks[build_id] = (lock, holders + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, holders = self._build_locks[build_id]
                if holders == 1:
                    del self._build_locks[build_id]
                else:
                    self._build_locks[build_id] = (lock, holders - 1)


def sweep_downloads(directory: Path, ttl_s: float = DEFAULT_TTL_S, now: float | None = None) -> list[Path]:
    """Remove the build folders in ``directory`` unused for ``ttl_s`` or left half-written; the removed.

    A folder is half-written when it has no snapfile and held only temporaries of dead
    writers, or nothing touched for ``ttl_s`` (a temporary left before a reboot, which the
    temporaries' sweep cannot judge). A download running in another process keeps its live
    temporary, and a folder just made for one is fresh: both stay. Only folders named by a
    build id are touched.
    """
    now = time.time() if now is None else now
    removed = [folder for folder in _build_folders(directory) if _sweep_folder(folder, ttl_s, now)]
    _log_removed(directory, removed, ttl_s)
    return removed


def _build_folders(directory: Path) -> list[Path]:
    try:
        return sorted(path for path in directory.iterdir() if path.is_dir() and _is_build_id(path.name))
    except FileNotFoundError:
        return []
    except OSError as exc:
        _log.warning("cannot list the template cache %s: %s", directory, exc)
        return []


def _sweep_folder(folder: Path, ttl_s: float, now: float) -> bool:
    """Remove ``folder`` if unused for ``ttl_s`` or half-written (``sweep_downloads``); whether it went."""
    snapfile = folder / SNAPFILE
    try:
        dead_writers = sweep_stale_temporaries(folder)
        if snapfile.is_file():
            stale = now - snapfile.stat().st_mtime > ttl_s
        else:
            left = list(folder.iterdir())
            stale = (bool(dead_writers) and not left) or all(
                now - path.lstat().st_mtime > ttl_s for path in (folder, *left)
            )
    except (OSError, StorageError) as exc:
        _log.warning("cannot sweep %s: %s", folder, exc)
        return False
    if stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def _log_removed(directory: Path, removed: list[Path], ttl_s: float) -> None:
    if removed:
        _log.info(
            "template cache %s: removed %d snapfile downloads unused for %.0f h or half-written: %s",
            directory,
            len(removed),
            ttl_s / 3600,
            ", ".join(folder.name for folder in removed),
        )


def _is_build_id(name: str) -> bool:
    try:
        uuid.UUID(name)
    except ValueError:
        return False
    return True

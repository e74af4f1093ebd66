"""Guest RAM served lazily from a build's memfile: the QEMU counterpart of E2B's UFFD page server.

QEMU maps guest RAM from a file (``memory-backend-file,share=on``). Here that file is the
only file of a FUSE filesystem served by this process, so the kernel turns the guest's
page faults into FUSE reads and its dirty pages into FUSE writes (facts file 3.2, 4.5;
feasibility study 4.1)::

    guest page fault -> kernel page cache miss -> FUSE READ  -> Overlay.readinto
                                                                  |- DIRTY/ZERO: cache file / zeros
                                                                  '- NOT_PRESENT: BuildFile (header chain,
                                                                     chunk cache, storage)
    guest write -> dirty page in the page cache -> FUSE WRITE -> Overlay.write_at
                   (written back on fsync, on munmap/exit,      all-zero page -> ZERO, else DIRTY
                    or by the kernel's periodic writeback)

    {work_dir}/memory-XXXX.mnt/memfile    the file QEMU maps (size = device size, fixed)
    {work_dir}/memory-XXXX.cow            the overlay's sparse cache file (one block per page)

The overlay's tracker is therefore the dirty set: DIRTY pages become the diff build's
data, ZERO pages map to nil, untouched pages keep the parent's mapping. Alongside, the
first access of every page is recorded (``accesses``: the raw material of prefetch data),
and a storage read that fails after bounded retries is kept (``raise_if_failed``), so a
resume fails with the storage's message instead of the guest's SIGBUS.

Why a resume reads whole 4 MiB windows: QEMU marks guest RAM ``MADV_HUGEPAGE``, and for
such a mapping the kernel's fault path reads two PMD-sized (2 MiB) folios around the
faulting page whatever the file's readahead setting (``do_sync_mmap_readahead``). So every
first touch of a 2 MiB region of guest RAM arrives as about 4 MiB of 1 MiB FUSE reads,
and an idle guest woken by one request reads most of its non-zero memory.

Mount choices (libfuse 3.14, kernel 6.x):

* no ``direct_io``: QEMU needs MAP_SHARED, and a direct-I/O FUSE file refuses shared
  mappings unless the server negotiates FUSE_DIRECT_IO_ALLOW_MMAP (libfuse >= 3.16);
* ``kernel_cache``: the page cache survives opens, because every change to the file
  passes through the kernel (no one else writes the overlay while mounted);
* ``max_read`` is left unlimited: the kernel's ``max_pages`` (1 MiB here) caps a request;
  readahead is raised from 128 KiB to 2 MiB on the mount's own backing device, so a
  sequential scan arrives as 1 MiB reads (big writes are always on in FUSE 3; writeback
  of dirty pages also arrives in runs of up to 1 MiB);
* one loop thread (``-s``): every callback needs the GIL anyway, and a single thread
  served 4 KiB faults about twice as fast as libfuse's thread pool here;
* ``auto_unmount`` (by default): a ``fusermount3`` helper unmounts if this process dies
  without ``close``, so a crash never leaves a dead mount behind. A sandbox process turns it
  off: its owner unmounts what a dead sandbox process left, and the helper would be one
  more process per sandbox;
* libfuse's SIGHUP/SIGTERM handlers are removed again at INIT: a library must not turn
  the host process's SIGTERM into "unmount and carry on".

Rules for callers, which the FUSE design imposes:

* never make a request on ``path`` from the process serving it, not even a read: the
  kernel waits for a sent FUSE request uninterruptibly, so if this process were killed
  while one of its threads waited, it could never exit, and its FUSE connection (which
  its exit would abort) would hold every other client too (a QEMU stuck in
  ``fuse_flush``). Other processes are safe: when this one dies, the connection closes
  and their requests fail at once. So ``sync`` runs a child process, the prefetcher
  reads through one, and the mount is found in the mount table, never by a lookup;
* stop the VM (or at least pause it and call ``sync``) before exporting, so every dirty
  page has reached the overlay;
* ``close`` unmounts, waits for the serving thread and deletes the cache file; a mount
  still in use (QEMU running) is detached lazily, then its connection aborted, and
  reported. This process must not keep the file open past ``close``: at exit it would
  wait forever on a flush that no thread serves.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path
from types import TracebackType
from typing import Final

from ember.block import BaseDevice, CowCache, Overlay, export_diff
from ember.errors import EmberError, UsageError
from ember.header import HUGEPAGE_SIZE, PAGE_SIZE, Header
from ember.memory.filesystem import (
    READ_RETRY_DELAYS_S,
    CountingDevice,
    LazyMemoryStats,
    MemoryFileSystem,
    TrafficCounters,
)
from ember.memory.prefetch import AccessRecorder, PageAccesses

_log = logging.getLogger(__name__)

MEMORY_FILE_NAME: Final = "memfile"
MOUNT_TIMEOUT_S: Final = 10.0
UNMOUNT_TIMEOUT_S: Final = 10.0
SYNC_TIMEOUT_S: Final = 120.0
READAHEAD_BYTES: Final = HUGEPAGE_SIZE
FUSECTL_DIR: Final = Path("/sys/fs/fuse/connections")


class LazyMemoryError(EmberError):
    """The memory file could not be mounted, served or unmounted."""


_OPEN: Final[weakref.WeakSet[LazyMemory]] = weakref.WeakSet()
"""Mounted memory files not yet closed: closed at interpreter exit, before the FUSE thread
stops, so an exit never waits on a request no thread will answer."""


@atexit.register
def _close_open_memory_files() -> None:
    for memory in list(_OPEN):
        try:
            memory.close()
        except EmberError as exc:
            _log.warning("closing a memory file left open at exit: %s", exc)


def _raise_readahead(device: int) -> None:
    """Let sequential faults arrive as 2 MiB of readahead instead of the default 128 KiB.

    The setting belongs to this mount's own backing device (``/sys/class/bdi/0:N``), so no
    other file system is affected. Call it once a request has been answered: the kernel
    sends requests only after FUSE INIT, and INIT would lower the setting again. Without
    write access to sysfs the default stays (slower, still correct).
    """
    setting = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    try:
        setting.write_text(f"{READAHEAD_BYTES >> 10}\n")
    except OSError as exc:
        _log.debug("cannot raise the memory file's readahead (%s): %s", setting, exc)


def abort_fuse_connection(device: int) -> str | None:
    """Abort the FUSE connection of ``device`` (fusectl); None on success, else why not.

    The last resort of ``close``: every request still waiting, and every later one, fails
    at once (a process mapping the file gets SIGBUS on its next miss), so the serving thread
    can end. fusectl is mounted at its usual place if nothing mounted it yet.
    """
    try:
        listed = any(FUSECTL_DIR.iterdir())
    except OSError as exc:
        return f"cannot abort the FUSE connection: {FUSECTL_DIR} is unusable ({exc})"
    if not listed:
        mounted = subprocess.run(
            ["mount", "-t", "fusectl", "fusectl", str(FUSECTL_DIR)],
            capture_output=True,
            text=True,
            check=False,
        )
        if mounted.returncode != 0:
            return f"cannot mount fusectl: {mounted.stderr.strip()}"
    try:
        (FUSECTL_DIR / str(os.minor(device)) / "abort").write_text("1\n")
    except OSError as exc:
        return f"cannot abort FUSE connection {os.minor(device)}: {exc}"
    return None


def _require_fuse() -> None:
    if shutil.which("fusermount3") is None:
        raise LazyMemoryError("fusermount3 not found: install the Debian package fuse3 (scripts/setup.sh)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise LazyMemoryError("/dev/fuse is missing or not accessible: run as root on a kernel with FUSE")


def _mount_fields(path: Path) -> list[bytes] | None:
    """The ``/proc/self/mountinfo`` fields of the mount at ``path``, or None.

    ``path`` is made absolute without resolving it: resolving would look the mount point up,
    which asks the FUSE server, and the serving process must never wait on itself.
    """
    target = os.fsencode(os.path.abspath(path)).replace(b" ", b"\\040")
    with open("/proc/self/mountinfo", "rb") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 4 and fields[4] == target:
                return fields
    return None


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point of this process's mount namespace."""
    return _mount_fields(path) is not None


def mount_device(path: Path) -> int | None:
    """The device number (``major:minor``) of the mount at ``path``, or None."""
    fields = _mount_fields(path)
    if fields is None:
        return None
    major, _, minor = fields[2].partition(b":")
    return os.makedev(int(major), int(minor))


class LazyMemory:
    """A mounted memory file over ``base`` (a memfile ``BuildFile``); ``path`` is what QEMU maps.

    ``page_size`` (4 KiB or 2 MiB) is the dirty-tracking granularity, and must equal the
    block size of the header a diff is exported against. The mount is live when the
    constructor returns; ``close`` (or leaving the ``with`` block) ends it.
    """

    def __init__(
        self,
        base: BaseDevice,
        work_dir: Path,
        page_size: int = PAGE_SIZE,
        *,
        file_name: str = MEMORY_FILE_NAME,
        read_retry_delays_s: tuple[float, ...] = READ_RETRY_DELAYS_S,
        auto_unmount: bool = True,
    ) -> None:
        if page_size not in (PAGE_SIZE, HUGEPAGE_SIZE):
            raise UsageError(f"page size {page_size} is neither {PAGE_SIZE} nor {HUGEPAGE_SIZE}: pick one")
        if "/" in file_name or file_name in ("", ".", ".."):
            raise UsageError(f"memory file name {file_name!r} must be a plain file name")
        _require_fuse()
        self._counters = TrafficCounters()
        self._recorder = AccessRecorder(base.size, page_size)
        cache = CowCache.create(work_dir, "memory", base.size, block_size=page_size)
        self.overlay = Overlay(CountingDevice(base, self._counters, read_retry_delays_s), cache)
        self.mount_dir = Path(tempfile.mkdtemp(prefix="memory-", suffix=".mnt", dir=work_dir))
        self.path = self.mount_dir / file_name
        self._auto_unmount = auto_unmount
        self._closed = False
        self._released = False
        self._release_lock = threading.Lock()
        self._failure: BaseException | None = None
        self._device: int | None = None
        ready = threading.Event()
        operations = MemoryFileSystem(self.overlay, file_name, self._counters, self._recorder, ready)
        self._prefetch_threads = operations.prefetch_threads
        self._thread = threading.Thread(
            target=self._serve, args=(operations,), name=f"fuse-{self.mount_dir.name}", daemon=True
        )
        self._thread.start()
        _OPEN.add(self)
        try:
            self._wait_mounted(ready)
            self._device = self._stat_device()
            _raise_readahead(self._device)
        except BaseException:
            with contextlib.suppress(EmberError):
                self.close()
            raise

    def _serve(self, operations: MemoryFileSystem) -> None:
        import mfusepy  # loads libfuse3 through ctypes: only processes that mount pay for it

        from ember.memory.direct_fuse import DirectReadFUSE

        operations.requester = lambda: mfusepy.fuse_get_context()[2]
        try:
            DirectReadFUSE(
                operations,
                str(self.mount_dir),
                foreground=True,
                nothreads=True,
                kernel_cache=True,
                auto_unmount=self._auto_unmount,
                fsname="ember-memory",
                subtype="ember",
            )
        except BaseException as exc:  # reported by the constructor or close(), never lost
            self._failure = exc
        finally:
            if self._closed:
                self._release_overlay()

    def _wait_mounted(self, ready: threading.Event) -> None:
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not ready.wait(0.01):
            if not self._thread.is_alive():
                raise LazyMemoryError(
                    f"cannot mount the memory file at {self.mount_dir}: {self._failure or 'libfuse exited'}; "
                    "check that /dev/fuse works and fuse3 (libfuse3.so.3) is installed"
                )
            if time.monotonic() > deadline:
                raise LazyMemoryError(
                    f"the memory file at {self.mount_dir} was not mounted within {MOUNT_TIMEOUT_S:.0f} s"
                )

    def _stat_device(self) -> int:
        """The mount's device number, from the mount table: no FUSE request from this process."""
        device = mount_device(self.mount_dir)
        if device is None:
            raise LazyMemoryError(f"the memory file system at {self.mount_dir} is not in the mount table")
        return device

    def __enter__(self) -> LazyMemory:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    @property
    def size(self) -> int:
        return self.overlay.size

    @property
    def page_size(self) -> int:
        return self.overlay.block_size

    def stats(self) -> LazyMemoryStats:
        """Traffic through the file so far (``base_read_bytes``: what was loaded lazily)."""
        return self._counters.stats(self._recorder)

    def accesses(self) -> PageAccesses:
        """Every page reached through the file so far, in first-access order."""
        return self._recorder.snapshot()

    def add_prefetcher(self, thread_id: int) -> None:
        """Count the reads of kernel thread ``thread_id`` (``threading.get_native_id()``) as prefetches."""
        self._prefetch_threads.add(thread_id)

    def remove_prefetcher(self, thread_id: int) -> None:
        self._prefetch_threads.discard(thread_id)

    def raise_if_failed(self) -> None:
        """Raise ``LazyMemoryError`` if a read of the build or a write of the overlay failed for good."""
        failure = self._counters.failure
        if failure is not None and failure.startswith("writing"):
            raise LazyMemoryError(
                f"guest memory could not be kept ({failure}; {self._counters.failures} failed requests): "
                f"free space under {self.mount_dir.parent} and start the sandbox again"
            )
        if failure is not None:
            raise LazyMemoryError(
                f"guest memory could not be read from storage ({failure}); check that the storage "
                "is reachable and the build's memfile objects are intact, then resume again"
            )

    def sync(self) -> None:
        """Have the kernel write every dirty page of the file back into the overlay.

        Needed only while some process still maps the file (a paused VM): unmapping
        (QEMU exiting) writes dirty pages back by itself. The fsync runs in a child process
        (coreutils ``sync FILE``): a thread of this process waiting on its own FUSE server
        could never finish if the process were killed mid-way (the kernel waits for the
        reply uninterruptibly, and the server is gone), leaving it unkillable; a child's
        wait ends as soon as this process's FUSE connection closes. A page the overlay could
        not store (a full disk) fails the sync, and the message says why.
        """
        if self._closed:
            raise UsageError(f"the memory file at {self.mount_dir} is closed: sync before close")
        try:
            done = subprocess.run(
                ["sync", "--", str(self.path)],
                capture_output=True,
                text=True,
                check=False,
                timeout=SYNC_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LazyMemoryError(f"cannot write the memory file's dirty pages back: {exc}") from exc
        if done.returncode != 0:
            raise LazyMemoryError(
                f"cannot write the memory file's dirty pages back: {done.stderr.strip() or done.returncode}"
            )
        self.raise_if_failed()

    def close(self, timeout_s: float = UNMOUNT_TIMEOUT_S) -> None:
        """Unmount, wait for the FUSE thread, remove the mount point and the overlay's cache.

        Every step runs even when one fails; the failures are raised together afterwards.
        A file still in use (a running VM) is detached lazily, so it leaves /proc/mounts at
        once; if its users still hold it after ``timeout_s``, the FUSE connection is aborted
        so that no process (this one at exit included) waits on it forever. Either way
        ``LazyMemoryError`` says what happened. Calling it again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        problems: list[str] = []
        if is_mounted(self.mount_dir):
            busy = _fusermount(["-u"], self.mount_dir)
            if busy is not None:
                lazy = _fusermount(["-u", "-z"], self.mount_dir)
                problems.append(
                    f"it was still in use ({busy}) and was detached lazily"
                    + ("" if lazy is None else f", which failed too: {lazy}")
                    + "; stop the VM mapping it before closing"
                )
        self._thread.join(timeout_s)
        if self._thread.is_alive() and self._device is not None:
            aborted = abort_fuse_connection(self._device)
            problems.append("its FUSE connection was aborted" if aborted is None else aborted)
            self._thread.join(timeout_s)
        if not self._thread.is_alive():
            problems += self._release_overlay()
        try:
            self.mount_dir.rmdir()
        except OSError as exc:
            problems.append(f"cannot remove the mount point: {exc}")
        if self._failure is not None:
            problems.append(f"the FUSE loop failed: {self._failure!r}")
        if problems:
            raise LazyMemoryError(f"closing the memory file at {self.mount_dir}: " + "; ".join(problems))

    def _release_overlay(self) -> list[str]:
        """Delete the overlay's cache once; from ``close`` or from the thread when it ends late."""
        with self._release_lock:
            if self._released:
                return []
            self._released = True
            try:
                self.overlay.close()
            except EmberError as exc:
                _log.warning("cannot delete the memory overlay's cache: %s", exc)
                return [str(exc)]
        return []


def _fusermount(options: list[str], mount_dir: Path) -> str | None:
    """Run fusermount3; None on success, else what it said."""
    try:
        done = subprocess.run(
            ["fusermount3", *options, str(mount_dir)], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if done.returncode == 0 else done.stderr.strip() or f"exit {done.returncode}"


def export_memory_diff(
    lazy: LazyMemory, parent_header: Header, new_build_id: uuid.UUID, out_path: Path
) -> Header:
    """Write the guest's dirty pages to ``out_path``; the memfile header of ``new_build_id``.

    ``parent_header`` is the header of the build ``lazy`` was opened on. The VM must be
    stopped or paused: dirty pages still in the page cache are written back first, so a
    paused guest's latest writes are in the diff. Pages written with zeros map to nil
    (the overlay turns an all-zero page into a hole), so the diff holds only non-zero pages.
    """
    if parent_header.metadata.block_size != lazy.page_size:
        raise UsageError(
            f"the parent memfile has {parent_header.metadata.block_size}-byte blocks but the memory file "
            f"tracks {lazy.page_size}-byte pages: open LazyMemory with page_size = the header's block size"
        )
    lazy.sync()
    return export_diff(lazy.overlay, parent_header, new_build_id, out_path)

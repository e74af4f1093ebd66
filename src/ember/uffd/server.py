"""The page server: serves a Firecracker guest's memory faults from a memfile build.

Order of use (Firecracker blocks in ``/snapshot/load`` until its first faults are served)::

    server = PageServer(BuildFile.open(storage, build, "memfile"), run_dir / "uffd.sock")
    server.start()                                   # listening; a thread accepts and serves
    FirecrackerVm.restore(..., memory_backend=MemoryBackend(UFFD, server.socket_path))
    ... guest runs; server.prefault(offset) warms pages; server.tracker / recorder observe ...
    vm.stop(); server.close()                        # VM first: a stopped server leaves it stuck

One fault, in the serve thread (facts file 4.5)::

    address -> region -> memfile offset = region.offset + (page address - region.base)
            -> page = offset // page_size -> tracker state:
               DIRTY, CLEAN      already mapped: wake the waiter
               ZERO, REMOVED     install zeros (UFFDIO_ZEROPAGE for 4 KiB, else COPY of zeros)
               NOT_PRESENT       read the memfile into the copy buffer, UFFDIO_COPY it
                                 (an all-zero 4 KiB page goes in as ZEROPAGE and counts as ZERO;
                                 2 MiB pages are copied whatever they hold)

Sequential faults grow the copy unit (1, 2, 4 ... pages up to ``max_copy_bytes``) over pages
that are still NOT_PRESENT, so a guest streaming through memory costs fewer round trips.

Serving a fault in Python makes a round trip about 3x longer than in C (26 us against 9 us
with the faulting thread on the server's CPU, bench/bench_uffd.py). So when the memfile's
data are uncompressed files of a ``LocalStorage`` (``BuildFile.local_data_files``), the
serve thread runs the fast path in C (``_faultloop``, compiled by ``make setup``) without
the GIL: it reads messages and serves plain missing faults exactly as ``_serve_fault``
does, reading the files with ``pread`` through a segment table made from the header. It
hands every message it does not serve back to Python untouched: a batch holding a REMOVE
event, WP and MINOR faults, a read that fails (Python retries it and reports the failure),
an unexpected errno, a fault when its access log is full; EAGAIN faults come back to be
retried later, as Python's own do. Python serves them with the code below, which stays the
one implementation of every slow case, and then runs the loop again until ``close`` stops
it. After a fault the loop keeps reading for ``_SPIN_NS`` before it sleeps: the next fault
of the same thread usually follows within microseconds, and waking a sleeping server costs
more than that on a VM whose idle CPUs halt. Other sources (remote builds behind a
``ChunkCache``, compressed builds, anything not a ``BuildFile``) are served by Python.

What the C loop shares: the tracker's state array, which it writes without the tracker's
lock; the counts and the read-ahead window (an int64 array that ``stats`` adds to the
Python counts); its ring of accesses, which ``AccessRecorder`` drains under its lock before
it records or reports, so first accesses keep their order. Between runs of the loop Python
writes states on the same thread. The only other writer while it runs is ``prefault``,
whose ``mark_installed`` follows its own install: when both serve one page, the kernel maps
it once and the other install fails with EEXIST and only wakes the guest. The loop's
unlocked store may then land between ``mark_installed``'s read and write and leave CLEAN
where the loop wrote DIRTY for a write fault; the prefault had mapped the page, so without
write protection the tracker would miss the write anyway (as it misses every write to a
page installed by a read), and with it the guest's write faults again as a WP fault, which
Python marks DIRTY.

Guarantees: a page is never installed from anything but the memfile or zeros; the tracker,
the access record and the counts show an install before the install wakes the guest; a source
read that fails with a ``StorageError`` is retried as every build read is (``ember.build.retry``:
3 retries, 50 ms to 500 ms); then, as on any other read failure, the server stops serving, keeps
the userfaultfd open (closing it would let the guest see zero pages where data belongs), sets
``error`` and calls ``on_error``: the caller must stop the VM.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import dataclasses
import os
import select
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

import numpy as np

from ember.build import BuildFile
from ember.build.retry import read_with_retries
from ember.errors import EmberError, StorageError, VmError
from ember.uffd.handshake import ACCEPT_TIMEOUT_S, Handshake, HandshakeListener, Region
from ember.uffd.ioctl import (
    EVENT_PAGEFAULT,
    EVENT_REMOVE,
    MESSAGE_BYTES,
    PAGEFAULT_FLAG_MINOR,
    PAGEFAULT_FLAG_WP,
    PAGEFAULT_FLAG_WRITE,
    InstallResult,
    UffdMessage,
    Userfaultfd,
    parse_messages,
)
from ember.uffd.tracker import AccessRecorder, AccessType, PageState, PageTracker

try:
    import ember.uffd._faultloop as _faultloop
except ImportError as exc:
    raise VmError(
        f"ember's native page-fault loop is not built ({exc}): run `make setup` to compile it"
    ) from exc

_SMALL_PAGE: Final = 4096
_ZERO_PAGE: Final = bytes(_SMALL_PAGE)
_MESSAGES_PER_READ: Final = 256
_DEFERRED_POLL_MS: Final = 1
_JOIN_TIMEOUT_S: Final = 10.0
_ACCESS_LOG_ENTRIES: Final = 1 << 16
# How long the native loop keeps reading after a fault before it sleeps: longer than the gap
# between one thread's faults (10-15 us here), short enough that a quiet guest costs nothing.
_SPIN_NS: Final = 50_000
_LOGGED_ACCESS: Final = (AccessType.READ, AccessType.WRITE)


class PageSource(Protocol):
    """Where page bytes come from: ``ember.build.BuildFile`` of a memfile, or any device like it."""

    @property
    def size(self) -> int: ...

    def readinto(self, buffer: memoryview, offset: int) -> int: ...


@dataclasses.dataclass
class PageServerStats:
    """Counts since the server started; ``bytes_installed`` includes read-ahead pages.

    The server's own instance is updated by its thread; ``PageServer.stats`` hands out copies
    with the native loop's counts added (``native_faults`` of the ``faults`` were served there).
    """

    faults: int = 0
    native_faults: int = 0
    installs: int = 0
    bytes_installed: int = 0
    zero_installs: int = 0
    removes: int = 0
    deferred: int = 0
    source_retries: int = 0
    peer_gone: bool = False


class _CopyBuffer:
    """Page-aligned memory the kernel copies from: ``view`` for Python, ``address`` for the ioctl.

    A bytearray rather than an mmap: views of it may outlive the server (a source's exception
    traceback can hold one), and a bytearray needs no close that such a view would refuse.
    """

    def __init__(self, size_bytes: int) -> None:
        self._raw = bytearray(size_bytes + _SMALL_PAGE)
        start = ctypes.addressof(ctypes.c_char.from_buffer(self._raw))
        pad = -start % _SMALL_PAGE
        self.address = start + pad
        self._pad = pad
        self.view = memoryview(self._raw)[pad : pad + size_bytes]

    def starts_with_zero_page(self) -> bool:
        return self._raw[self._pad : self._pad + _SMALL_PAGE] == _ZERO_PAGE


class PageServer:
    """Serves one Firecracker's guest memory from ``source`` (see the module docstring).

    ``write_protect`` installs read faults write-protected (``UFFDIO_COPY_MODE_WP``) and
    resolves WP faults as writes: only for a VMM that registered its regions with WP mode
    (E2B's Firecracker fork); upstream Firecracker 1.12 registers MISSING only.
    """

    def __init__(
        self,
        source: PageSource,
        socket_path: Path,
        *,
        write_protect: bool = False,
        max_copy_bytes: int = 0,
        accept_timeout_s: float = ACCEPT_TIMEOUT_S,
        on_error: Callable[[EmberError], None] | None = None,
    ) -> None:
        self.source = source
        self.socket_path = socket_path
        self.write_protect = write_protect
        self.max_copy_bytes = max_copy_bytes
        self.accept_timeout_s = accept_timeout_s
        self.on_error = on_error
        self._listener = HandshakeListener(socket_path)
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"uffd {socket_path.name}", daemon=True)
        self._handshake: Handshake | None = None
        self._tracker: PageTracker | None = None
        self._recorder: AccessRecorder | None = None
        self._error: EmberError | None = None
        self._counts = PageServerStats()
        self._prefault_lock = threading.Lock()
        self._buffers: list[_CopyBuffer] = []
        self._bases: list[int] = []
        self._regions: tuple[Region, ...] = ()
        self._native: _faultloop.FaultLoop | None = None
        self._source_fds: list[int] = []
        self._shared = np.zeros(_faultloop.SLOTS, dtype=np.int64)
        self._shared[_faultloop.SEQUENTIAL_NEXT] = -1
        self._shared[_faultloop.WINDOW_PAGES] = 1

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Accept and serve in a thread; a second call (``with`` after ``start``) does nothing."""
        if not self._thread.is_alive() and not self._done.is_set():
            self._thread.start()

    def wait_ready(self, timeout_s: float = ACCEPT_TIMEOUT_S) -> tuple[Region, ...]:
        """The regions once Firecracker has connected; raises the server's error if it failed."""
        if not self._ready.wait(timeout_s):
            self.raise_if_failed()
            raise VmError(f"no Firecracker connected to {self.socket_path} within {timeout_s:.0f} s")
        return self._regions

    @property
    def error(self) -> EmberError | None:
        return self._error

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def wait_failed(self, timeout_s: float) -> EmberError | None:
        """The error that stopped the server, waiting up to ``timeout_s`` for one; None if still serving."""
        self._done.wait(timeout_s)
        return self._error

    def close(self) -> None:
        """Stop serving and release the socket, fds and buffers. Stop the VM first."""
        self._stopping.set()
        if self._native is not None:
            self._native.stop()
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"x")
        if self._thread.is_alive():
            self._thread.join(_JOIN_TIMEOUT_S)
        self._listener.close()
        if self._handshake is not None:
            self._handshake.close()
            self._handshake = None
        self._buffers.clear()
        if not self._thread.is_alive():  # a serve thread stuck past the join may still read them
            for fd in self._source_fds:
                os.close(fd)
            self._source_fds.clear()
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> PageServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- what the server observed -----------------------------------------------------------

    @property
    def tracker(self) -> PageTracker:
        if self._tracker is None:
            raise VmError("the page server has no tracker before Firecracker connects: call wait_ready()")
        return self._tracker

    @property
    def recorder(self) -> AccessRecorder:
        if self._recorder is None:
            raise VmError(
                "the page server has no access record before Firecracker connects: call wait_ready()"
            )
        return self._recorder

    @property
    def stats(self) -> PageServerStats:
        native = self._shared.tolist()
        counts = self._counts
        return PageServerStats(
            faults=counts.faults + native[_faultloop.FAULTS],
            native_faults=native[_faultloop.FAULTS],
            installs=counts.installs + native[_faultloop.INSTALLS],
            bytes_installed=counts.bytes_installed + native[_faultloop.BYTES_INSTALLED],
            zero_installs=counts.zero_installs + native[_faultloop.ZERO_INSTALLS],
            removes=counts.removes,
            deferred=counts.deferred + native[_faultloop.DEFERRED],
            source_retries=counts.source_retries,
            peer_gone=counts.peer_gone or bool(native[_faultloop.PEER_GONE]),
        )

    def prefault(self, offset: int, timeout_s: float = ACCEPT_TIMEOUT_S) -> bool:
        """Install the page holding memfile ``offset`` (read mode) if it is NOT_PRESENT; True if installed.

        Safe from any thread while the server runs; a fault racing for the same page makes
        one of the two installs report EEXIST, which changes nothing.
        """
        regions = self.wait_ready(timeout_s)
        handshake, tracker, recorder = self._handshake, self.tracker, self.recorder
        page_size = regions[0].page_size
        page = offset // page_size
        region = next((r for r in regions if r.offset <= page * page_size < r.offset + r.size), None)
        if handshake is None or region is None:
            raise VmError(f"memfile offset {offset} is in no guest memory region; prefetch only guest pages")
        if tracker.state_of(page) is not PageState.NOT_PRESENT:
            return False
        with self._prefault_lock:
            if not self._buffers:
                raise VmError("the page server was closed: prefault only while it serves")
            buffer = self._buffers[1]
            self._read_source(buffer.view[:page_size], page * page_size)
            address = region.base_host_virt_addr + page * page_size - region.offset
            uffd = Userfaultfd(handshake.uffd)
            result = uffd.copy(address, buffer.address, page_size, write_protect=self.write_protect)
        if result is not InstallResult.INSTALLED:
            return False
        tracker.mark_installed(page, page + 1, PageState.CLEAN)
        recorder.record(page, AccessType.PREFETCH)
        return True

    # -- the serve thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            handshake = self._listener.accept(self.accept_timeout_s, cancel_fd=self._wake_read)
            if handshake is None:
                return
            self._handshake = handshake
            self._attach(handshake)
            self._ready.set()
            self._serve(handshake)
        except EmberError as exc:
            self._fail(exc)
        except OSError as exc:
            self._fail(VmError(f"the page server on {self.socket_path} failed: {exc}"))
        finally:
            self._done.set()

    def _fail(self, exc: EmberError) -> None:
        self._error = exc
        self._done.set()
        if self.on_error is not None:
            self.on_error(exc)

    def _attach(self, handshake: Handshake) -> None:
        regions = tuple(sorted(handshake.regions, key=lambda r: r.base_host_virt_addr))
        page_size = handshake.page_size
        end = max(region.offset + region.size for region in regions)
        if end > self.source.size:
            raise VmError(
                f"Firecracker's guest memory spans {end} bytes but the memfile holds {self.source.size}: "
                "restore the snapshot that was taken together with this memfile build"
            )
        copy_bytes = max(page_size, self.max_copy_bytes // page_size * page_size)
        self._buffers = [_CopyBuffer(copy_bytes), _CopyBuffer(page_size), _CopyBuffer(page_size)]
        self._regions = regions
        self._bases = [region.base_host_virt_addr for region in regions]
        self._tracker = PageTracker(self.source.size // page_size)
        native = self._native = self._native_loop(handshake, self._tracker)
        if native is None:
            self._recorder = AccessRecorder(page_size)
        else:
            self._recorder = AccessRecorder(page_size, lambda: _native_accesses(native))

    def _native_loop(self, handshake: Handshake, tracker: PageTracker) -> _faultloop.FaultLoop | None:
        """The C fast path over the memfile's local data files; None leaves every fault to Python."""
        source = self.source
        if not isinstance(source, BuildFile):
            return None
        files = source.local_data_files()
        if files is None:
            return None
        fd_of_build: list[int] = []
        for path in files:
            if path is None:
                fd_of_build.append(-1)
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:  # Python's reads report the file when a fault needs it
                return None
            self._source_fds.append(fd)
            fd_of_build.append(fd)
        mappings = source.header.mappings
        segments = np.stack(
            [
                mappings.offsets.astype(np.int64),
                mappings.lengths.astype(np.int64),
                mappings.storage_offsets.astype(np.int64),
                np.array(fd_of_build, dtype=np.int64)[mappings.build_index],
            ],
            axis=1,
        )
        regions = np.array(
            [(r.base_host_virt_addr, r.end_host_virt_addr, r.offset) for r in self._regions], dtype=np.uint64
        )
        return _faultloop.FaultLoop(
            uffd=handshake.uffd,
            wake_fd=self._wake_read,
            page_size=handshake.page_size,
            regions=regions,
            segments=segments,
            states=tracker.shared_states(),
            copy=self._buffers[0].view,
            zeros=self._buffers[2].view,
            shared=self._shared,
            log_capacity=_ACCESS_LOG_ENTRIES,
            write_protect=self.write_protect,
            spin_ns=_SPIN_NS,
        )

    def _serve(self, handshake: Handshake) -> None:
        poller = select.poll()
        poller.register(handshake.uffd, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        uffd = Userfaultfd(handshake.uffd)
        raw = bytearray(MESSAGE_BYTES * _MESSAGES_PER_READ)
        deferred: list[tuple[int, int]] = []
        while not self._stopping.is_set():
            faults, deferred = deferred, []
            if self._native is not None and not faults:
                unhandled, retry = self._native.run()
                deferred = self._take_events(parse_messages(retry))
                faults = self._take_events(parse_messages(unhandled))
            else:
                poller.poll(_DEFERRED_POLL_MS if faults else None)
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_read, 64)
                while True:
                    try:
                        count = os.readv(handshake.uffd, [raw])
                    except BlockingIOError:
                        break
                    messages = parse_messages(memoryview(raw)[:count])
                    faults += self._take_events(messages)
                    if len(messages) < _MESSAGES_PER_READ:
                        break
            for address, flags in faults:
                if self._stopping.is_set():
                    return
                if self._serve_fault(uffd, address, flags) is InstallResult.RETRY:
                    deferred.append((address, flags))
                    self._counts.deferred += 1

    def _take_events(self, messages: list[UffdMessage]) -> list[tuple[int, int]]:
        """Apply the REMOVE events among ``messages`` now; their faults ``(address, flags)`` to serve next."""
        faults = []
        for message in messages:
            if message.event == EVENT_PAGEFAULT:
                faults.append((message.second, message.first))
            elif message.event == EVENT_REMOVE:
                self._remove(message.first, message.second)
        return faults

    def _region_of(self, address: int) -> Region:
        index = bisect.bisect_right(self._bases, address) - 1
        if index >= 0:
            region = self._regions[index]
            if address < region.end_host_virt_addr:
                return region
        raise VmError(
            f"Firecracker faulted at {address:#x}, outside every guest memory region it announced: "
            "its memory layout changed after the handshake; stop the VM"
        )

    def _remove(self, start: int, end: int) -> None:
        """Pages inside ``[start, end)`` were zapped: known zero until written again."""
        self._counts.removes += 1
        for region in self._regions:
            low, high = max(start, region.base_host_virt_addr), min(end, region.end_host_virt_addr)
            if low >= high:
                continue
            page_size = region.page_size
            first = (region.offset + low - region.base_host_virt_addr + page_size - 1) // page_size
            last = (region.offset + high - region.base_host_virt_addr) // page_size
            if first < last:
                self.tracker.set_range(first, last, PageState.REMOVED)

    def _serve_fault(self, uffd: Userfaultfd, address: int, flags: int) -> InstallResult:
        if flags & PAGEFAULT_FLAG_MINOR:
            raise VmError(f"minor fault at {address:#x}: the VMM registered MINOR mode, which is not served")
        self._counts.faults += 1
        region = self._region_of(address)
        page_size = region.page_size
        page_address = address & ~(page_size - 1)
        page = (region.offset + page_address - region.base_host_virt_addr) // page_size
        tracker = self.tracker
        if flags & PAGEFAULT_FLAG_WP:
            uffd.write_protect(page_address, page_size, protect=False)
            tracker.mark_written(page, page + 1)
            return InstallResult.INSTALLED
        write = bool(flags & PAGEFAULT_FLAG_WRITE)
        state = tracker.state_of(page)
        if state is PageState.DIRTY or state is PageState.CLEAN:
            uffd.wake(page_address, page_size)
            return InstallResult.EXISTS
        if state is PageState.NOT_PRESENT:
            pages = self._copy_pages(region, page, write)
            buffer = self._buffers[0]
            self._read_source(buffer.view[: pages * page_size], page * page_size)
            zero = pages == 1 and page_size == _SMALL_PAGE and buffer.starts_with_zero_page()
        else:
            pages, zero = 1, True
        # Tracker, record and counts first: once the install wakes the guest they must show it.
        counts = self._counts
        counts.installs += 1
        counts.bytes_installed += pages * page_size
        counts.zero_installs += zero
        if write:
            tracker.set_range(page, page + 1, PageState.DIRTY)
        tracker.mark_installed(page + write, page + pages, PageState.ZERO if zero else PageState.CLEAN)
        self.recorder.record(page, AccessType.WRITE if write else AccessType.READ)
        result = self._install(uffd, page_address, pages * page_size, zero, write)
        if result is InstallResult.INSTALLED:
            return result
        counts.installs -= 1
        counts.bytes_installed -= pages * page_size
        counts.zero_installs -= zero
        if result is InstallResult.EXISTS:  # mapped meanwhile by a prefault: the read-ahead was not
            tracker.set_range(page + 1, page + pages, PageState.NOT_PRESENT)
            uffd.wake(page_address, page_size)
        elif result is InstallResult.GONE:
            counts.peer_gone = True
        else:  # RETRY: nothing was mapped; the fault is served again from the same states
            tracker.set_range(page, page + 1, state)
            tracker.set_range(page + 1, page + pages, PageState.NOT_PRESENT)
        return result

    def _copy_pages(self, region: Region, page: int, write: bool) -> int:
        """How many pages to install for a fault on ``page``: more while faults run sequentially.

        The window lives in the array the native loop shares, so both paths grow one window.
        """
        shared = self._shared
        capacity = len(self._buffers[0].view) // region.page_size
        window = 1
        if page == int(shared[_faultloop.SEQUENTIAL_NEXT]) and not (write and self.write_protect):
            window = min(int(shared[_faultloop.WINDOW_PAGES]) * 2, capacity)
        limit = min(window, (region.offset + region.size) // region.page_size - page)
        pages = max(self.tracker.absent_run(page, limit) if limit > 1 else 1, 1)
        shared[_faultloop.WINDOW_PAGES] = window
        shared[_faultloop.SEQUENTIAL_NEXT] = page + pages
        return pages

    def _install(
        self, uffd: Userfaultfd, address: int, length: int, zero: bool, write: bool
    ) -> InstallResult:
        protect = self.write_protect and not write
        if zero:
            if length == _SMALL_PAGE and not protect:
                return uffd.zeropage(address, length)
            return uffd.copy(address, self._buffers[2].address, length, write_protect=protect)
        return uffd.copy(address, self._buffers[0].address, length, write_protect=protect)

    def _read_source(self, view: memoryview, offset: int) -> None:
        def retrying(_error: StorageError, _delay_s: float) -> None:
            self._counts.source_retries += 1

        closed = VmError("the page server was closed while retrying a memfile read")

        def wait(delay_s: float) -> None:
            if self._stopping.wait(delay_s):
                raise closed

        try:
            filled = read_with_retries(
                lambda: self.source.readinto(view, offset), on_retry=retrying, sleep=wait
            )
        except EmberError as exc:
            if exc is closed:
                raise
            raise VmError(
                f"cannot read guest memory at memfile offset {offset} ({len(view)} bytes): {exc}; "
                "the VM is waiting for this page: stop it"
            ) from exc
        if filled != len(view):
            raise VmError(
                f"cannot read guest memory at memfile offset {offset} ({len(view)} bytes): the memfile "
                f"ended at byte {offset + filled}; the VM is waiting for this page: stop it"
            )


def _native_accesses(loop: _faultloop.FaultLoop) -> list[tuple[int, AccessType]]:
    """The native loop's access log entries (``page * 2 + write``) since the last call."""
    return [(entry >> 1, _LOGGED_ACCESS[entry & 1]) for entry in loop.drain()]

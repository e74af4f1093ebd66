"""What the page server knows about each guest page, and the order pages were first touched.

One byte per page of the uffd page size (facts file 3.2)::

    page    0    1    2    3    4   ...
    state  [0]  [4]  [1]  [3]  [2]  ...
            |    |    |    |    ZERO: installed as zeros; exported as empty (nil)
            |    |    |    REMOVED: zapped by the guest (REMOVE event); known zero, not mapped
            |    |    DIRTY: written since the restore; exported as the new layer's data
            |    CLEAN: installed from the memfile and (as far as the server saw) unchanged
            NOT_PRESENT: never installed; reads fall through to the parent build

Transitions: ``mark_installed`` (ZERO or CLEAN) only upgrades NOT_PRESENT and REMOVED, so a
late install never hides a write; ``mark_written`` promotes NOT_PRESENT, CLEAN and ZERO to
DIRTY and leaves REMOVED alone; ``set_range`` forces a state (REMOVE events).

The tracker sees writes only when it is told of them: write faults, and write-protect faults
where the VMM registered WP. Without WP a page installed by a read and written later stays
CLEAN here, which is why the Firecracker pause path takes its dirty set from a Diff snapshot.

The state array is sized by the memfile header (up to 16 TiB: 4 Gi pages of 4 KiB), so it
is anonymous memory mapped without a swap reservation: the kernel backs only the parts
written, and a guest of 512 MiB costs what it touches, whatever the header claims. Scans
(``count``, ``export``) walk it in slices so their temporaries stay small too.

Both classes are thread safe among Python threads. The page server's native fault loop
(``ember.uffd.server``) also writes the state array, without the lock, and keeps its first
accesses in a log of its own that ``AccessRecorder`` takes in (``backlog``) before it records
or reports anything, so the order of first accesses stays the order they happened in.
"""

from __future__ import annotations

import enum
import mmap
import threading
from collections.abc import Callable, Iterator
from typing import Final

import numpy as np
import numpy.typing as npt

from ember.build import MemoryPrefetch
from ember.errors import UsageError


class PageState(enum.IntEnum):
    NOT_PRESENT = 0
    DIRTY = 1
    ZERO = 2
    REMOVED = 3
    CLEAN = 4


class AccessType(enum.Enum):
    """How a page was first reached, as ``metadata.json prefetch.memory.access_types`` spells it."""

    READ = "r"
    WRITE = "w"
    PREFETCH = "p"


_UPGRADABLE_STATES: Final = (PageState.NOT_PRESENT, PageState.REMOVED)
_WRITABLE_STATES: Final = (PageState.NOT_PRESENT, PageState.CLEAN, PageState.ZERO)
_UPGRADABLE: Final = np.array([state in _UPGRADABLE_STATES for state in PageState], dtype=bool)
_WRITABLE: Final = np.array([state in _WRITABLE_STATES for state in PageState], dtype=bool)


_MAP_NORESERVE: Final = getattr(mmap, "MAP_NORESERVE", 0x4000)
"""Python 3.11's mmap lacks the name; 0x4000 is its value on x86-64 and arm64 Linux."""
_SCAN_PAGES: Final = 1 << 24


def _zeroed_states(page_count: int) -> npt.NDArray[np.uint8]:
    """``page_count`` zero bytes that take memory only where they are written (module docstring)."""
    if page_count == 0:
        return np.zeros(0, dtype=np.uint8)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
    try:
        memory = mmap.mmap(-1, page_count, flags=flags)
    except OSError as exc:
        raise UsageError(
            f"cannot map a state byte for each of {page_count} guest pages: {exc}; the memfile header's "
            "size is larger than this host can address"
        ) from exc
    return np.frombuffer(memory, dtype=np.uint8)


class PageTracker:
    """The state of every page of one guest's memory; all methods are thread safe."""

    def __init__(self, page_count: int) -> None:
        if page_count < 0:
            raise UsageError(f"guest memory cannot have {page_count} pages")
        self._states = _zeroed_states(page_count)
        self._lock = threading.Lock()

    def _slices(self) -> Iterator[tuple[int, npt.NDArray[np.uint8]]]:
        for start in range(0, len(self._states), _SCAN_PAGES):
            yield start, self._states[start : start + _SCAN_PAGES]

    @property
    def page_count(self) -> int:
        return len(self._states)

    def shared_states(self) -> npt.NDArray[np.uint8]:
        """The state array itself, for the native fault loop (see the module docstring)."""
        return self._states

    def state_of(self, page: int) -> PageState:
        self._check(page, page + 1)
        return PageState(int(self._states[page]))

    def set_range(self, first_page: int, end_page: int, state: PageState) -> None:
        self._check(first_page, end_page)
        with self._lock:
            self._states[first_page:end_page] = state

    def mark_installed(self, first_page: int, end_page: int, state: PageState) -> None:
        """Record an install of ZERO or CLEAN pages, keeping any state the install cannot override."""
        if state not in (PageState.ZERO, PageState.CLEAN):
            raise UsageError(f"an install leaves pages ZERO or CLEAN, not {state.name}")
        self._check(first_page, end_page)
        with self._lock:
            if end_page - first_page == 1:  # the per-fault path: plain ints, no numpy masks
                if int(self._states[first_page]) in _UPGRADABLE_STATES:
                    self._states[first_page] = int(state)
                return
            window = self._states[first_page:end_page]
            window[_UPGRADABLE[window]] = state

    def mark_written(self, first_page: int, end_page: int) -> None:
        self._check(first_page, end_page)
        with self._lock:
            window = self._states[first_page:end_page]
            window[_WRITABLE[window]] = PageState.DIRTY

    def absent_run(self, first_page: int, max_pages: int) -> int:
        """How many pages from ``first_page`` on (at most ``max_pages``) are NOT_PRESENT."""
        self._check(first_page, first_page)
        window = self._states[first_page : first_page + max_pages]
        present = np.flatnonzero(window != PageState.NOT_PRESENT)
        return int(present[0]) if len(present) else len(window)

    def count(self, state: PageState) -> int:
        with self._lock:
            return sum(int(np.count_nonzero(part == state)) for _, part in self._slices())

    def export(self) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
        """``(dirty, empty)`` page indices: DIRTY, and ZERO or REMOVED (facts file 3.2)."""
        dirty: list[npt.NDArray[np.uint64]] = [np.zeros(0, dtype=np.uint64)]
        empty: list[npt.NDArray[np.uint64]] = [np.zeros(0, dtype=np.uint64)]
        with self._lock:
            for start, part in self._slices():
                dirty.append(np.flatnonzero(part == PageState.DIRTY).astype(np.uint64) + np.uint64(start))
                zeroed = (part == PageState.ZERO) | (part == PageState.REMOVED)
                empty.append(np.flatnonzero(zeroed).astype(np.uint64) + np.uint64(start))
        return np.concatenate(dirty), np.concatenate(empty)

    def _check(self, first_page: int, end_page: int) -> None:
        if not 0 <= first_page <= end_page <= len(self._states):
            raise UsageError(
                f"pages [{first_page}, {end_page}) are outside guest memory of {len(self._states)} pages"
            )


class AccessRecorder:
    """First access of each page, in order: the data a later resume prefetches (facts file 4.6).

    ``backlog``, when given, hands over the accesses recorded elsewhere since its last call
    (the native fault loop's log); they are taken in before anything is recorded or reported.
    """

    def __init__(
        self, page_size: int, backlog: Callable[[], list[tuple[int, AccessType]]] | None = None
    ) -> None:
        self.page_size = page_size
        self._order: dict[int, AccessType] = {}
        self._backlog = backlog
        self._lock = threading.Lock()

    def record(self, page: int, access: AccessType) -> None:
        with self._lock:
            self._take_backlog()
            self._order.setdefault(page, access)

    def prefetch(self) -> MemoryPrefetch:
        """Pages in first-access order with their access types, for ``TemplateMetadata.prefetch``."""
        with self._lock:
            self._take_backlog()
            pages = tuple(self._order)
            types = tuple(access.value for access in self._order.values())
        return MemoryPrefetch(indices=pages, access_types=types, block_size=self.page_size)

    def _take_backlog(self) -> None:
        if self._backlog is not None:
            for page, access in self._backlog():
                self._order.setdefault(page, access)

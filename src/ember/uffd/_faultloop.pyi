from typing import Any, TypeAlias

import numpy.typing as npt
from typing_extensions import Buffer

_Memory: TypeAlias = Buffer | npt.NDArray[Any]

NOT_PRESENT: int
DIRTY: int
ZERO: int
REMOVED: int
CLEAN: int
FAULTS: int
INSTALLS: int
BYTES_INSTALLED: int
ZERO_INSTALLS: int
DEFERRED: int
PEER_GONE: int
SEQUENTIAL_NEXT: int
WINDOW_PAGES: int
SLOTS: int

class FaultLoop:
    def __init__(
        self,
        *,
        uffd: int,
        wake_fd: int,
        page_size: int,
        regions: _Memory,
        segments: _Memory,
        states: _Memory,
        copy: _Memory,
        zeros: _Memory,
        shared: _Memory,
        log_capacity: int,
        write_protect: bool,
        spin_ns: int,
    ) -> None: ...
    def run(self) -> tuple[bytes, bytes]: ...
    def stop(self) -> None: ...
    def drain(self) -> list[int]: ...

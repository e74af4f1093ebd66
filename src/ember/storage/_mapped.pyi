from typing import Any, TypeAlias

import numpy.typing as npt
from typing_extensions import Buffer

_Column: TypeAlias = Buffer | npt.NDArray[Any]

TABLE_HEADER: int

class MapSet:
    def __init__(self) -> None: ...
    def map(self, fd: int, length: int, /) -> int: ...
    def retire(self, address: int, /) -> None: ...
    @property
    def mapped(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def hits(self) -> int: ...

class Gather:
    def __init__(
        self,
        maps: MapSet,
        offsets: _Column,
        lengths: _Column,
        storage_offsets: _Column,
        build_index: _Column,
        size: int,
        sources: tuple[_Column | None, ...] | list[_Column | None],
    ) -> None: ...
    def readinto(self, buffer: Buffer, offset: int, start: int, /) -> int: ...
    def read(self, offset: int, length: int, /) -> bytes | None: ...

def mappable(fd: int, /) -> bool: ...

from typing import Any

import numpy.typing as npt

def pack(
    source_fd: int,
    target_fd: int,
    offsets: npt.NDArray[Any],
    lengths: npt.NDArray[Any],
    kernel_copy_min: int,
    /,
) -> int: ...

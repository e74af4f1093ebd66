"""Copying one object between two storages without holding it in memory.

Two strategies, picked per object:

* both sides ``LocalStorage``: the kernel copies file to file (``os.copy_file_range``, which
  can reflink or copy server-side; ``sendfile``-free fallback for filesystems that refuse it)
  into a temporary sibling of the destination, fsynced and renamed into place;
* anything else: ``get_to_file`` into a private temporary directory, then ``put_file``.

Either way the destination object appears whole or not at all (the storage contract for
puts), so a copy that fails halfway leaves nothing partial behind.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Final

from ember.errors import ObjectNotFound, StorageError
from ember.storage import LocalStorage, Storage
from ember.storage.base import atomic_write, check_key

_KERNEL_COPY_STEP: Final = 1 << 30
_UNSUPPORTED_ERRNOS: Final = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM}
)
_STREAM_BUFFER_BYTES: Final = 4 << 20


def copy_object(source: Storage, destination: Storage, key: str) -> int:
    """Copy ``key`` from ``source`` to ``destination``; returns the bytes copied.

    Raises ``ObjectNotFound`` (from the source) when the object does not exist there.
    """
    if isinstance(source, LocalStorage) and isinstance(destination, LocalStorage):
        return _copy_local(source, destination, key)
    with tempfile.TemporaryDirectory(prefix="ember-copy-") as scratch:
        staged = Path(scratch) / "object"
        source.get_to_file(key, staged)
        size_bytes = staged.stat().st_size
        destination.put_file(key, staged)
    return size_bytes


def _copy_local(source: LocalStorage, destination: LocalStorage, key: str) -> int:
    source_path = source.root / check_key(key)
    try:
        reader = source_path.open("rb")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        raise ObjectNotFound(key, source.url) from exc
    except OSError as exc:
        raise StorageError(f"cannot read {key!r} in {source.url}: {exc}; check permissions") from exc
    with reader:
        size_bytes = os.fstat(reader.fileno()).st_size
        atomic_write(destination.root / key, lambda target: _kernel_copy(reader, target, size_bytes))
    return size_bytes


def _kernel_copy(reader: BinaryIO, target: BinaryIO, size_bytes: int) -> None:
    """Copy ``size_bytes`` from ``reader`` to ``target`` inside the kernel when it can."""
    copied = 0
    try:
        while copied < size_bytes:
            step = os.copy_file_range(
                reader.fileno(), target.fileno(), min(_KERNEL_COPY_STEP, size_bytes - copied), copied, copied
            )
            if step == 0:
                break
            copied += step
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED_ERRNOS or copied:
            raise
        reader.seek(0)
        shutil.copyfileobj(reader, target, _STREAM_BUFFER_BYTES)
        return
    if copied != size_bytes:
        raise StorageError(
            f"source file shrank while copying ({copied} of {size_bytes} bytes): "
            "another process is rewriting it; retry when it is done"
        )

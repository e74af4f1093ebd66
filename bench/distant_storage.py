"""A simulated bucket for benchmarks: local objects behind ``FIRST_BYTE_S`` of latency per ranged read.

``distant:///abs/dir`` opens the store at ``/abs/dir`` (a ``templates`` directory) wrapped so that
every ranged read waits ``FIRST_BYTE_S`` first, a GCS-like time to first byte; whole-object reads
(metadata, headers) are not delayed. It is not a ``LocalStorage``, so a node reads it through its
chunk cache like any remote store (``ember.sandbox.resume.open_read_storage``).

Sandboxes open their node's storage in their own processes, forked from the fork server, so
importing this module is not enough: the bench adds it to the fork server's preloaded modules
(``preload_in_sandbox_processes``, which also puts this directory on PYTHONPATH) before the
first ``Node`` starts it. Importing it patches
``ember.sandbox.resume.open_storage`` (which ``open_read_storage`` calls) to know the scheme;
every other URL opens as before.
"""

from __future__ import annotations

import multiprocessing.forkserver
import os
import time
from collections.abc import Callable
from pathlib import Path

import ember.sandbox.resume as _resume
from ember.sandbox.worker import fork_context
from ember.storage import LocalStorage, Storage

FIRST_BYTE_S = 0.03
SCHEME = "distant://"


class DistantStorage(Storage):
    """``inner`` with ``FIRST_BYTE_S`` before every ranged read (module docstring)."""

    def __init__(self, inner: LocalStorage) -> None:
        self.inner = inner

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.inner.root}"

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)

    def put_file(self, key: str, path: Path) -> None:
        self.inner.put_file(key, path)

    def create_exclusive(self, key: str, data: bytes) -> None:
        self.inner.create_exclusive(key, data)

    def get_to_file(self, key: str, path: Path) -> None:
        self.inner.get_to_file(key, path)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        time.sleep(FIRST_BYTE_S)
        return self.inner.read_range(key, offset, length)

    def read_range_into(self, key: str, offset: int, buffer: bytearray | memoryview) -> int:
        time.sleep(FIRST_BYTE_S)
        return self.inner.read_range_into(key, offset, buffer)

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def delete_prefix(self, prefix: str) -> int:
        return self.inner.delete_prefix(prefix)

    def crc32c(self, key: str) -> int | None:
        return self.inner.crc32c(key)


_original_open_storage: Callable[[str], Storage] = getattr(_resume, "open_storage")  # noqa: B009


def _open_storage(url: str) -> Storage:
    if url.startswith(SCHEME):
        return DistantStorage(LocalStorage(Path(url[len(SCHEME) :])))
    return _original_open_storage(url)


setattr(_resume, "open_storage", _open_storage)  # noqa: B010


def distant_url(templates_dir: Path) -> str:
    return f"{SCHEME}{templates_dir.absolute()}"


def preload_in_sandbox_processes() -> None:
    """Have the fork server import this module too; must run before the first ``Node``.

    The fork server finds it through PYTHONPATH: Python 3.11's fork server ignores the
    ``sys_path`` multiprocessing hands it (its ``sys.path`` is the interpreter's default), and
    sandbox processes no longer import the owner's ``__main__`` (which used to bring this module).
    """
    here = str(Path(__file__).resolve().parent)
    paths = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([here, *paths])
    context = fork_context()
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    preloaded = list(getattr(server, "_preload_modules", None) or ())
    if __name__ not in preloaded:
        context.set_forkserver_preload([*preloaded, __name__])

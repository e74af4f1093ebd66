"""Cross-process userfaultfd harness for the page server tests (a helper module, not a test file).

A forked child plays Firecracker: it maps anonymous memory, registers it with a real
userfaultfd, sends the fd and a regions JSON over the server's socket with SCM_RIGHTS, then
runs a script of reads, writes and removes against that memory and reports, over a pipe,
the SHA-256 of every page it read. Faults block the child until the parent's server installs
the page; the parent never touches the child's memory itself.
"""

from __future__ import annotations

import array
import ctypes
import hashlib
import json
import mmap
import os
import select
import signal
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ember.build import BuildFile
from ember.header import DiffMetadata, Header, empty_device_header, serialize_header
from ember.memory import export_memory
from ember.storage import MEMFILE, BuildPaths, LocalStorage, Storage
from ember.uffd import negotiate_api, open_userfaultfd, register
from ember.uffd.ioctl import FEATURE_EVENT_REMOVE, REGISTER_MODE_MISSING, REGISTER_MODE_WP

MAP_HUGETLB = 0x40000
CHILD_TIMEOUT_S = 20.0


def page_pattern(page: int, page_size: int) -> bytes:
    """Recognisable, page-specific, non-zero content."""
    seed = hashlib.sha256(page.to_bytes(8, "little")).digest()
    return (seed * (page_size // len(seed) + 1))[:page_size]


def layer_pattern(generation: int, page: int, page_size: int) -> bytes:
    """What layer ``generation`` of a chain writes into ``page``: distinct per layer and page."""
    seed = hashlib.sha256(f"{generation}/{page}".encode()).digest()
    return (seed * (page_size // len(seed) + 1))[:page_size]


def store_chain(
    storage: Storage, page_size: int, page_count: int, layers: Sequence[Mapping[int, bool]]
) -> tuple[BuildFile, list[bytes]]:
    """A memfile chain stored the way pauses store it, and the image its top build reads as.

    Layer ``g`` (generation ``g + 1``) writes ``layer_pattern`` into each page it maps to True
    and zeroes each page it maps to False (a nil mapping); pages no layer names stay nil.
    """
    image = [bytes(page_size)] * page_count
    header: Header | None = None
    build = uuid.uuid4()
    for generation, layer in enumerate(layers, start=1):
        build = uuid.uuid4()
        dirty = sorted(page for page, written in layer.items() if written)
        empty = sorted(page for page, written in layer.items() if not written)
        parent = header or empty_device_header(build, page_size * page_count, page_size)
        diff = DiffMetadata(np.array(dirty, dtype=np.uint64), np.array(empty, dtype=np.uint64), page_size)
        header = diff.to_diff_header(parent, build)
        for page in empty:
            image[page] = bytes(page_size)
        for page in dirty:
            image[page] = layer_pattern(generation, page, page_size)
        paths = BuildPaths(build)
        storage.put(paths.data_object(MEMFILE), b"".join(image[page] for page in dirty))
        storage.put(paths.header(MEMFILE), serialize_header(header))
    return BuildFile.open(storage, build, MEMFILE), image


def store_memfile(root: Path, page_size: int, page_count: int, data_pages: Sequence[int]) -> BuildFile:
    """A memfile build whose ``data_pages`` hold ``page_pattern`` and every other page is nil."""
    ram = root / "ram"
    with ram.open("wb") as out:
        out.truncate(page_size * page_count)
        for page in data_pages:
            out.seek(page * page_size)
            out.write(page_pattern(page, page_size))
    build = uuid.uuid4()
    header = export_memory(ram, page_size * page_count, page_size, build, root / "memfile")
    storage = LocalStorage(root / "storage")
    paths = BuildPaths(build)
    storage.put(paths.header(MEMFILE), serialize_header(header))
    storage.put_file(paths.data_object(MEMFILE), root / "memfile")
    return BuildFile.open(storage, build, MEMFILE)


@dataclass(frozen=True)
class Op:
    """One step of the child's script: ``read``, ``write`` (fills the page with ``value``), ``remove``,
    or ``wait`` (until the parent's ``while_waiting`` returned)."""

    kind: str
    page: int
    value: int = 0


@dataclass(frozen=True)
class ChildOutcome:
    exit_code: int
    digests: tuple[str, ...]
    error: str


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_child(
    socket_path: Path,
    page_size: int,
    page_count: int,
    ops: Sequence[Op],
    *,
    hugetlb: bool = False,
    write_protect: bool = False,
    region_offset: int = 0,
    payload: bytes | None = None,
    while_waiting: Callable[[], None] | None = None,
    timeout_s: float = CHILD_TIMEOUT_S,
) -> ChildOutcome:
    """Fork the child, let it run ``ops``; its outcome (killed after ``timeout_s``: exit code -9).

    ``payload`` replaces the regions JSON the child sends (to play a broken VMM).
    """
    read_end, write_end = os.pipe()
    waiting_read, waiting_write = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        for fd in (read_end, waiting_read, go_write):
            os.close(fd)
        settings = (hugetlb, write_protect, region_offset, payload, (waiting_write, go_read))
        _child(write_end, socket_path, page_size, page_count, ops, *settings)
    for fd in (write_end, waiting_write, go_read):
        os.close(fd)
    try:
        if any(op.kind == "wait" for op in ops) and select.select([waiting_read], [], [], timeout_s)[0]:
            try:
                if while_waiting is not None:
                    while_waiting()
            finally:
                os.write(go_write, b"g")
        report = _read_all(read_end, timeout_s)
    finally:
        for fd in (read_end, waiting_read, go_write):
            os.close(fd)
    if report is None:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    exit_code = os.waitstatus_to_exitcode(status)
    if report is None:
        return ChildOutcome(exit_code, (), "timed out")
    document = json.loads(report or b'{"digests": [], "error": "no report"}')
    return ChildOutcome(exit_code, tuple(document["digests"]), document["error"])


def _read_all(fd: int, timeout_s: float) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        readable, _, _ = select.select([fd], [], [], timeout_s)
        if not readable:
            return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _child(
    report_fd: int,
    socket_path: Path,
    page_size: int,
    page_count: int,
    ops: Sequence[Op],
    hugetlb: bool,
    write_protect: bool,
    region_offset: int,
    payload: bytes | None,
    sync_fds: tuple[int, int],
) -> None:
    digests: list[str] = []
    error = ""
    try:
        size = page_size * page_count
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (MAP_HUGETLB if hugetlb else 0)
        memory = mmap.mmap(-1, size, flags=flags)
        base = ctypes.addressof(ctypes.c_char.from_buffer(memory))
        uffd = open_userfaultfd()
        negotiate_api(uffd, FEATURE_EVENT_REMOVE)
        register(uffd, base, size, REGISTER_MODE_MISSING | (REGISTER_MODE_WP if write_protect else 0))
        regions = [
            {
                "base_host_virt_addr": base,
                "size": size,
                "offset": region_offset,
                "page_size": page_size,
                "page_size_kib": page_size,
            }
        ]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
            peer.connect(str(socket_path))
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [uffd]).tobytes())]
            peer.sendmsg([payload or json.dumps(regions).encode()], rights)
        page = ctypes.create_string_buffer(page_size)
        for op in ops:
            address = base + op.page * page_size
            if op.kind == "read":
                ctypes.memmove(page, address, page_size)  # faults here, outside the GIL's concerns
                digests.append(sha(page.raw))
            elif op.kind == "wait":
                os.write(sync_fds[0], b"w")
                os.read(sync_fds[1], 1)
            elif op.kind == "write":
                ctypes.memset(address, op.value, page_size)
            else:
                memory.madvise(mmap.MADV_DONTNEED, op.page * page_size, page_size)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
    os.write(report_fd, json.dumps({"digests": digests, "error": error}).encode())
    os._exit(0 if not error else 1)

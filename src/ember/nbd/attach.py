"""Expose an NBD export as a local block device: ``/dev/nbdN`` where the kernel has the nbd
module, else ``/dev/loopN`` over a FUSE file served by Debian's ``nbdfuse``.

Kernel path (production hosts): a free ``/dev/nbdN`` from ``NbdDevicePool``, one socketpair (or
one negotiated socket, for a URL) per connection, attached through generic netlink with the
original's settings (``ember.nbd.netlink``). FUSE path (hosts without the module, like CI):
``nbdfuse <dir>/mnt/disk <url>`` gives a file whose reads and writes go to the server, and
``losetup`` turns it into a block device.

``AttachedDevice.close`` undoes every step that was done, in reverse order, also when a step
fails or attaching failed half-way: no loop device, FUSE mount, nbdfuse process or temporary
directory outlives it. Both paths need root.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from ember.nbd.client import connect
from ember.nbd.netlink import NbdNetlink
from ember.nbd.protocol import NbdError
from ember.nbd.thread import NbdServerThread

SYS_MODULE_NBD = Path("/sys/module/nbd")
SYS_BLOCK = Path("/sys/block")
NBDFUSE_READY_TIMEOUT_S = 10.0
NBDFUSE_EXIT_TIMEOUT_S = 10.0
KERNEL_CONNECTIONS = 1

_log = logging.getLogger(__name__)


class AttachMethod(enum.Enum):
    KERNEL = "kernel nbd"
    FUSE = "nbdfuse + loop"


class AttachedDevice:
    """A block device backed by an NBD export; ``close`` (or leaving the ``with``) detaches it."""

    def __init__(self, path: Path, method: AttachMethod, undo: list[Callable[[], None]]) -> None:
        self.path = path
        self.method = method
        self._undo = undo

    def close(self) -> None:
        """Run every undo step, newest first; raise the first failure after trying them all."""
        _undo_all(self._undo)

    def __enter__(self) -> AttachedDevice:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def kernel_nbd_available() -> bool:
    return SYS_MODULE_NBD.exists()


def attach_export(target: str | NbdServerThread, *, work_dir: Path | None = None) -> AttachedDevice:
    """Attach through the kernel when the nbd module is loaded, else through nbdfuse + loop.

    ``method`` on the result says which; raises NbdError naming the missing package or module.
    """
    if kernel_nbd_available():
        device = attach_kernel(target)
    else:
        device = attach_fuse(target.url if isinstance(target, NbdServerThread) else target, work_dir=work_dir)
    _log.info(
        "attached %s as %s (%s)",
        target if isinstance(target, str) else target.url,
        device.path,
        device.method.value,
    )
    return device


class NbdDevicePool:
    """Hands out free ``/dev/nbdN`` indices: no ``pid`` file and a size of 0 in sysfs, and not
    already handed out by this pool (the kernel marks a device busy only once connected)."""

    def __init__(self, sys_block: Path = SYS_BLOCK) -> None:
        self._sys_block = sys_block
        self._claimed: set[int] = set()
        self._lock = threading.Lock()

    def acquire(self) -> int:
        with self._lock:
            for index in sorted(self._indices()):
                if index not in self._claimed and self._is_free(index):
                    self._claimed.add(index)
                    return index
        raise NbdError(
            "no free /dev/nbdN device: load the module with more devices (modprobe nbd nbds_max=4096)"
        )

    def release(self, index: int) -> None:
        with self._lock:
            self._claimed.discard(index)

    def _indices(self) -> list[int]:
        names = (entry.name for entry in self._sys_block.glob("nbd*"))
        return [int(name[3:]) for name in names if name[3:].isdigit()]

    def _is_free(self, index: int) -> bool:
        device = self._sys_block / f"nbd{index}"
        try:
            return not (device / "pid").exists() and int((device / "size").read_text()) == 0
        except (OSError, ValueError):
            return False


_POOL = NbdDevicePool()


def attach_kernel(target: str | NbdServerThread) -> AttachedDevice:
    """``/dev/nbdN`` connected through netlink; the sockets are socketpairs into an in-process
    server, or sockets negotiated with the server a URL names."""
    undo: list[Callable[[], None]] = []
    try:
        netlink = NbdNetlink()
        undo.append(netlink.close)
        kernel_ends, size_bytes = _kernel_sockets(target, undo)
        index = _POOL.acquire()
        undo.append(lambda: _POOL.release(index))
        netlink.connect(index, size_bytes, [sock.fileno() for sock in kernel_ends])
        undo.append(lambda: netlink.disconnect(index))
        return AttachedDevice(Path(f"/dev/nbd{index}"), AttachMethod.KERNEL, undo)
    except BaseException:
        _undo_all(undo, raise_first=False)
        raise


def _kernel_sockets(
    target: str | NbdServerThread, undo: list[Callable[[], None]]
) -> tuple[list[socket.socket], int]:
    sockets: list[socket.socket] = []
    if isinstance(target, str):
        for _ in range(KERNEL_CONNECTIONS):
            sock, info = connect(target)
            undo.append(sock.close)
            sockets.append(sock)
        return sockets, info.size_bytes
    for _ in range(KERNEL_CONNECTIONS):
        kernel_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        undo.append(kernel_end.close)
        sockets.append(kernel_end)
        target.adopt(server_end)
    return sockets, target.disk_size


def attach_fuse(url: str, *, work_dir: Path | None = None) -> AttachedDevice:
    """``/dev/loopN`` over ``nbdfuse``'s file for ``url``; raises NbdError naming what is missing."""
    _require_fuse_tools()
    undo: list[Callable[[], None]] = []
    try:
        root = Path(tempfile.mkdtemp(prefix="ember-nbdfuse-", dir=work_dir))
        undo.append(lambda: shutil.rmtree(root, ignore_errors=True))
        mount_dir = root / "mnt"
        mount_dir.mkdir()
        pid_file = root / "nbdfuse.pid"
        log_file = root / "nbdfuse.log"
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                ["nbdfuse", "-P", str(pid_file), str(mount_dir / "disk"), url],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        undo.append(lambda: _stop_nbdfuse(process, mount_dir))
        _wait_ready(process, pid_file, log_file, url)
        loop_path = _run(["losetup", "-f", "--show", str(mount_dir / "disk")], "create a loop device").strip()
        undo.append(lambda: _detach_loop(loop_path))
        return AttachedDevice(Path(loop_path), AttachMethod.FUSE, undo)
    except BaseException:
        _undo_all(undo, raise_first=False)
        raise


def _require_fuse_tools() -> None:
    for tool, package in (("nbdfuse", "libnbd-bin"), ("fusermount3", "fuse3"), ("losetup", "mount")):
        if shutil.which(tool) is None:
            raise NbdError(
                f"{tool} not found: install the Debian package {package} (apt-get install {package})"
            )
    if not Path("/dev/fuse").exists():
        raise NbdError("/dev/fuse is missing: load the fuse module (modprobe fuse)")


def _wait_ready(process: subprocess.Popen[bytes], pid_file: Path, log_file: Path, url: str) -> None:
    deadline = time.monotonic() + NBDFUSE_READY_TIMEOUT_S
    while not (pid_file.exists() and pid_file.stat().st_size):
        if process.poll() is not None:
            output = log_file.read_text(errors="replace").strip()
            raise NbdError(f"nbdfuse could not serve {url} (exit {process.returncode}): {output}")
        if time.monotonic() > deadline:
            raise NbdError(f"nbdfuse did not get ready for {url} within {NBDFUSE_READY_TIMEOUT_S:.0f} s")
        time.sleep(0.01)


def _stop_nbdfuse(process: subprocess.Popen[bytes], mount_dir: Path) -> None:
    """Unmount (nbdfuse then exits by itself); kill it only if it does not."""
    if _is_mounted(mount_dir):
        _run(["fusermount3", "-u", str(mount_dir)], f"unmount {mount_dir}")
    try:
        process.wait(NBDFUSE_EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        if _is_mounted(mount_dir):
            _run(["fusermount3", "-u", "-z", str(mount_dir)], f"lazily unmount {mount_dir}")


def _detach_loop(loop_path: str) -> None:
    _run(["losetup", "-d", loop_path], f"detach {loop_path}")


def _is_mounted(path: Path) -> bool:
    target = os.fsencode(path.resolve())
    with open("/proc/mounts", "rb") as mounts:
        return any(line.split()[1] == target for line in mounts if len(line.split()) > 1)


def _run(argv: list[str], action: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NbdError(f"cannot {action}: {exc}") from exc
    if done.returncode != 0:
        raise NbdError(f"cannot {action}: {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _undo_all(undo: list[Callable[[], None]], raise_first: bool = True) -> None:
    first: BaseException | None = None
    while undo:
        step = undo.pop()
        try:
            step()
        except Exception as exc:  # keep undoing: one failed step must not leak the others
            _log.warning("detach step failed: %s", exc)
            first = first or exc
    if first is not None and raise_first:
        raise first

"""Guest RAM on 2 MiB huge pages: the host's reservation, checked, and a hugetlbfs mount for it.

The original backs guest memory with hugetlb pages by default (``-hugepages``), which the
host must reserve beforehand (``/proc/sys/vm/nr_hugepages``). Huge pages are never
allocated behind the user's back: when the reservation is short, the error says how to
make it, or how to build without huge pages.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ember.errors import UsageError
from ember.header import HUGEPAGE_SIZE

MEMINFO = Path("/proc/meminfo")


def free_hugepages(meminfo: Path = MEMINFO) -> int:
    """Free 2 MiB pages the host has reserved (``HugePages_Free``)."""
    found = re.search(r"^HugePages_Free:\s+(\d+)", meminfo.read_text(), re.M)
    return int(found.group(1)) if found else 0


def require_hugepages(size_bytes: int, meminfo: Path = MEMINFO) -> None:
    """Raise UsageError, saying how to reserve them, unless ``size_bytes`` of huge pages are free."""
    needed = -(-size_bytes // HUGEPAGE_SIZE)
    free = free_hugepages(meminfo)
    if free < needed:
        raise UsageError(
            f"guest memory on huge pages needs {needed} free 2 MiB pages but the host has {free}: reserve "
            f"them with 'echo {needed} | sudo tee /proc/sys/vm/nr_hugepages' (more for other guests), "
            "or pass -hugepages=false for 4 KiB pages"
        )


@contextlib.contextmanager
def hugetlbfs(work_dir: Path, size_bytes: int) -> Iterator[Path]:
    """A private hugetlbfs mount under ``work_dir`` for one guest's RAM file; unmounted on exit."""
    require_hugepages(size_bytes)
    mount_dir = Path(tempfile.mkdtemp(prefix="hugepages-", dir=work_dir))
    mounted = subprocess.run(
        ["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", str(mount_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        mount_dir.rmdir()
        raise UsageError(
            f"cannot mount hugetlbfs at {mount_dir}: {mounted.stderr.strip()}; run as root on a kernel with "
            "CONFIG_HUGETLBFS, or pass -hugepages=false"
        )
    try:
        yield mount_dir
    finally:
        subprocess.run(["umount", "-l", str(mount_dir)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            mount_dir.rmdir()

"""Reading files out of ext4 images from the host, without mounting (no root needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def debugfs_read(image: Path, path: str) -> str | None:
    """``path``'s content inside the ext4 ``image``, or None when it does not exist.

    debugfs 1.47.0 pads inline-data files to 60 bytes when it prints them, so the content
    is cut at the size ``stat`` reports.
    """
    stat = subprocess.run(["debugfs", "-R", f"stat {path}", str(image)], capture_output=True, text=True)
    if "Size: " not in stat.stdout:
        return None
    size = int(stat.stdout.split("Size: ", 1)[1].split()[0])
    done = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, text=True)
    return done.stdout[:size]

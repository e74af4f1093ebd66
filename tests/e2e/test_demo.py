"""The README's main command: ``scripts/demo_sdk.py`` (what ``make demo`` runs) against ``ember serve``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.root]

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo_sdk.py"


def test_the_readme_demo_creates_runs_writes_pauses_resumes_and_kills(sdk_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, str(DEMO)],
        env={**os.environ, **sdk_env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("created i") and len(lines[0].split()[1]) == 21
    assert lines[1].startswith("command: Linux ") and lines[2] == "hello from the sandbox"
    assert lines[3:6] == [
        "file: written before the pause",
        "paused: paused",
        "after connect, the file says: written before the pause",
    ]
    assert lines[6].startswith("killed; sandboxes left: ")

"""Refusals a user meets before any VM boots: the real ``ember`` process, its exit code, its one line.

Each case is a command line from issue 8 that the old main accepted, misread or answered
with a misleading message. A refusal must exit 2 for a usage error (1 for a bad build), say
in one stderr line what is wrong and what to do, and leave nothing in the storage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

BUILD = uuid.UUID("aaaaaaaa-0000-4000-8000-00000000000a")


def ember(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ember", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        check=False,
    )


def refusal(result: subprocess.CompletedProcess[str], command: str, returncode: int) -> str:
    """The single stderr line of a refused command (no traceback, no log lines, no internal error)."""
    assert result.returncode == returncode, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ember {command}: "), lines[0]
    assert "internal error" not in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "spelling", [["-timeout=-1"], ["-timeout", "-1"], ["--timeout", "-1"], ["-timeout=0"]]
)
def test_create_build_refuses_a_timeout_that_is_not_positive(tmp_path: Path, spelling: list[str]) -> None:
    """Reproduction: ``create-build -timeout=-1`` (and ``-timeout -1``), which the old main accepted."""
    storage = tmp_path / "store"
    result = ember("create-build", "-to-build", str(BUILD), "-storage", str(storage), *spelling)
    line = refusal(result, "create-build", 2)
    assert "-timeout" in line and "must be greater than zero" in line and "-help" in line, line
    assert not storage.exists()


@pytest.mark.parametrize("spelling", [["-start", "-5"], ["--start", "-5"], ["-start=-5"]])
def test_inspect_build_reads_the_word_after_start_as_its_value(spelling: list[str]) -> None:
    """Reproduction: Go's ``inspect-build -data -start -5``; the old main read ``-5`` as an unknown flag."""
    result = ember("inspect-build", "-build", str(BUILD), "-data", *spelling)
    line = refusal(result, "inspect-build", 2)
    assert "-start" in line and "-5 must not be negative" in line, line
    assert "not defined" not in line


@pytest.mark.parametrize(
    ("flag", "why"),
    [
        (["-firecracker", "v1.12.1"], "boots Linux guests with QEMU only"),
        (["-template", "my-template"], "stores builds by build ID only"),
        (["-sandbox-dir", "/fc-vm"], "do not bake SANDBOX_DIR into their snapshot"),
    ],
)
def test_create_build_refuses_a_flag_it_cannot_honour_with_the_reason(
    tmp_path: Path, flag: list[str], why: str
) -> None:
    """Reproduction: the seed's ``create-build -firecracker ...``, a flag the old main silently ignored."""
    storage = tmp_path / "store"
    result = ember("create-build", "-to-build", str(BUILD), "-storage", str(storage), *flag)
    line = refusal(result, "create-build", 2)
    assert line.startswith(f"ember create-build: {flag[0]}"), line
    assert why in line and f"drop {flag[0]}" in line, line
    assert "Building" not in result.stdout
    assert not storage.exists()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="resume-build starts a node: network namespaces need root")
def test_resume_build_of_an_empty_metadata_document_says_the_build_is_corrupt(tmp_path: Path) -> None:
    """Reproduction: a build whose metadata.json is ``{}``.

    The old main read it as a deprecated document and blamed the VMM: "snapshotted by
    Firecracker (unknown)", which sends the user to look for a Firecracker they never used.
    """
    storage = tmp_path / "store"
    folder = storage / "templates" / str(BUILD)
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps({}))
    result = ember("resume-build", "-from-build", str(BUILD), "-storage", str(storage), "-cmd", "true")
    line = refusal(result, "resume-build", 1)
    assert f"metadata.json of build {BUILD} has no template section" in line, line
    assert "corrupt" in line and "Firecracker" not in line, line
    assert "Running" not in result.stdout, "a sandbox started from a build without a template"
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json"]
    workspaces = storage / "orchestrator" / "sandbox"
    assert not workspaces.exists() or list(workspaces.iterdir()) == []

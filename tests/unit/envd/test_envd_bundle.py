"""The agent bundle: one deterministic executable zipapp of standard-library-only code."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from ember.envd import ENVD_VERSION, build_agent
from ember.envd.bundle import ARCHIVE_PACKAGE

AGENT_DIR = Path(__file__).parents[3] / "src" / "ember" / "envd" / "agent"


def test_bundle_is_deterministic_and_executable(tmp_path: Path) -> None:
    first = build_agent(tmp_path / "a" / "envd")
    second = build_agent(tmp_path / "b" / "envd")
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert os.stat(first).st_mode & 0o777 == 0o755


def test_bundle_holds_every_agent_module_and_a_main(tmp_path: Path) -> None:
    with zipfile.ZipFile(build_agent(tmp_path / "envd")) as archive:
        names = set(archive.namelist())
    modules = [path.stem for path in AGENT_DIR.glob("*.py")]
    expected = {f"{ARCHIVE_PACKAGE}/{name}{suffix}" for name in modules for suffix in (".py", ".pyc")}
    assert names == expected | {"__main__.py"}


def test_the_agent_runs_from_its_bytecode_not_compiled_at_each_start(tmp_path: Path) -> None:
    bundle = build_agent(tmp_path / "envd")
    tampered = tmp_path / "tampered"
    with zipfile.ZipFile(bundle) as original, zipfile.ZipFile(tampered, "w") as copy:
        for info in original.infolist():
            data = original.read(info)
            if info.filename.endswith(".py") and info.filename != "__main__.py":
                data = b"raise SystemExit('compiled from source')\n"
            copy.writestr(info, data)
    result = subprocess.run([sys.executable, str(tampered), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--port" in result.stdout


def test_bundle_runs_and_answers_help(tmp_path: Path) -> None:
    bundle = build_agent(tmp_path / "envd")
    result = subprocess.run(
        [sys.executable, str(bundle), "--help"], capture_output=True, text=True, check=True
    )
    assert "--port" in result.stdout


def test_bundle_prints_the_version_the_control_plane_reports(tmp_path: Path) -> None:
    bundle = build_agent(tmp_path / "envd")
    for flag in ("--version", "-version"):
        result = subprocess.run([str(bundle), flag], capture_output=True, text=True, check=True)
        assert result.stdout.strip() == ENVD_VERSION


def test_agent_imports_only_the_standard_library_and_itself() -> None:
    foreign = []
    for path in AGENT_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module or ""]
            else:
                continue
            foreign += [
                f"{path.name}: {m}" for m in modules if m.split(".")[0] not in sys.stdlib_module_names
            ]
    assert foreign == []

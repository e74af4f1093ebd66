"""``ember orchestrator`` flags as an operator meets them: refused before anything starts, with one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _ember(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ember", "orchestrator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ([], "-storage"),
        (["-storage", "/tmp/x", "-max-starting", "0"], "-max-sandboxes and -max-starting"),
        (["-storage", "/tmp/x", "-cache-disk-usage-target-percent", "0"], "-cache-disk-usage-target-percent"),
        (["-storage", "/tmp/x", "-cache-disk-usage-target-percent=150"], "-cache-disk-usage-target-percent"),
        (["-storage", "/tmp/x", "-public-url", "node1:5007"], "-public-url"),
        (["-storage", "/tmp/x", "-grpc-port", "x"], "-grpc-port"),
        (["-storage", "/tmp/x", "-nope"], "-nope"),
    ],
)
def test_bad_flags_are_one_line_usage_errors(args: list[str], complaint: str) -> None:
    result = _ember(*args)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ember orchestrator: ") and complaint in lines[0], (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_a_port_variable_that_is_no_port_is_refused() -> None:
    result = _ember("-storage", "/tmp/x", env={**os.environ, "GRPC_PORT": "50x8"})
    assert result.returncode == 2, result
    assert "GRPC_PORT='50x8' is not a TCP port" in result.stderr


def test_help_names_every_flag_and_its_default() -> None:
    result = _ember("--help")
    assert result.returncode == 0
    for flag in (
        "-storage",
        "-grpc-port",
        "-proxy-port",
        "-listen",
        "-domain",
        "-node-id",
        "-max-sandboxes",
        "-max-starting",
        "-public-url",
        "-cache-disk-usage-target-percent",
    ):
        assert flag in result.stdout, flag
    assert "GRPC_PORT" in result.stdout and "5008" in result.stdout and "(default 200)" in result.stdout

"""E2B's JS SDK (``e2b`` 2.51.x from npm, pinned by tests/e2e/js/package-lock.json), unchanged,
against the session's ``ember serve``: ``node tests/e2e/js/flow.mjs`` does one sandbox's life
and prints what it saw as JSON, asserted here. scripts/setup.sh installs the package with
``npm ci``; node and npm come from the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from serve_harness import ServeProcess

pytestmark = [pytest.mark.vm, pytest.mark.root]

JS_DIR = Path(__file__).parent / "js"


def test_the_js_sdk_creates_runs_writes_pauses_connects_and_kills(
    serve: ServeProcess, sdk_env: dict[str, str]
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the JS SDK test needs node >= 20 (and npm for scripts/setup.sh)")
    if not (JS_DIR / "node_modules" / "e2b" / "package.json").is_file():
        pytest.fail(f"E2B's JS SDK is not installed in {JS_DIR}: run scripts/setup.sh (npm ci there)")
    installed = json.loads((JS_DIR / "node_modules" / "e2b" / "package.json").read_text())["version"]
    assert installed.startswith("2.51."), f"tests/e2e/js has e2b {installed}, not 2.51.x: run npm ci there"
    environ = {name: value for name, value in os.environ.items() if not name.startswith("E2B_")}
    ran = subprocess.run(
        [node, "flow.mjs"],
        cwd=JS_DIR,
        env={**environ, **sdk_env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert "error" not in result, (result, ran.stderr)
    sandbox_id = result["create"]["sandboxId"]
    assert sandbox_id.startswith("i") and len(sandbox_id) == 21
    assert result["run"] == {
        "exitCode": 0,
        "stdout": "js-out\nLinux\n",
        "stderr": "js-err\n",
        "streamed": "js-out\nLinux\n",
    }
    assert result["failing"] == {"raised": True, "exitCode": 7}
    assert result["read"] == "written by the js sdk"
    assert result["pause"] is True
    assert result["listedWhilePaused"] == [{"sandboxId": sandbox_id, "state": "paused"}]
    assert result["connect"] == {
        "sandboxId": sandbox_id,
        "file": "written by the js sdk",
        "sleeper": "alive",
        "state": "running",
    }
    assert (result["kill"], result["killAgain"]) == (True, False)

"""The checked-in gRPC code is what scripts/gen_protos.py makes of the checked-in .proto files.

A .proto edited without regenerating (or a generated file edited by hand) fails here, with the
command that fixes it in the message.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
RPC_DIR = REPO / "src" / "ember" / "rpc"
GENERATOR = REPO / "scripts" / "gen_protos.py"
FIX = "run .venv/bin/python scripts/gen_protos.py and commit the result"


def _generated(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.glob("*_pb2*.py*"))}


def test_checked_in_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--out-root", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    fresh = _generated(tmp_path / "ember" / "rpc")
    checked_in = _generated(RPC_DIR)
    assert sorted(checked_in) == sorted(fresh), FIX
    stale = [name for name, content in fresh.items() if checked_in[name] != content]
    assert stale == [], f"stale: {stale}; {FIX}"


def test_every_proto_has_its_four_generated_modules() -> None:
    stems = sorted(path.stem.replace("-", "_") for path in RPC_DIR.glob("*.proto"))
    assert stems == ["info", "orchestrator", "proxy", "template_manager"]
    suffixes = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
    expected = sorted(f"{stem}{suffix}" for stem in stems for suffix in suffixes)
    assert sorted(_generated(RPC_DIR)) == expected

"""Regenerate the gRPC code in src/ember/rpc/ from the .proto files beside it.

Run ``.venv/bin/python scripts/gen_protos.py`` after editing a .proto, and commit what it
writes; ``tests/unit/rpc/test_generated.py`` regenerates into a temporary directory and fails
when the checked-in files differ. For each ``ember/rpc/<name>.proto`` it writes
``<name>_pb2.py`` and ``<name>_pb2.pyi`` (protoc's own Python and stub generators),
``<name>_pb2_grpc.py`` (grpcio-tools) and ``<name>_pb2_grpc.pyi`` (mypy-protobuf, so that
servicers and stubs type-check under mypy strict); a hyphen in a name becomes ``_``.

Why ``-I src``: the node protos declare no package (their method paths must be
``/SandboxService/Create``), so protoc would name the imported module after the include-relative
path (``import orchestrator_pb2``), which is not importable inside ``ember.rpc``. With ``src`` as
the include root the files are ``ember/rpc/*.proto``, ``template-manager.proto`` imports
``ember/rpc/orchestrator.proto``, and every generated import is ``from ember.rpc import ...``
without post-processing. The ``ember/rpc/`` prefix also keeps generic file names such as
``info.proto`` from clashing in protobuf's process-wide descriptor pool. The file path is not on
the wire: only the package, service, method names and field numbers are.

The output depends on the generator versions, so they are pinned here and checked.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

SOURCE_ROOT = Path(__file__).resolve().parents[1] / "src"
PROTO_DIR = Path("ember") / "rpc"
GENERATOR_VERSIONS = {"grpcio-tools": "1.85.4", "mypy-protobuf": "5.1.0"}


def check_generator_versions() -> None:
    """Exit with a message when an installed generator is not the pinned one."""
    for package, pinned in GENERATOR_VERSIONS.items():
        installed = importlib.metadata.version(package)
        if installed != pinned:
            sys.exit(
                f"gen_protos: {package} {installed} is installed but the checked-in code was generated "
                f"with {pinned}: install {package}=={pinned}, or bump the pin in scripts/gen_protos.py "
                "and pyproject.toml and commit the regenerated files"
            )


def proto_files() -> list[Path]:
    """The .proto files to compile, relative to ``SOURCE_ROOT``, in a stable order."""
    return sorted(path.relative_to(SOURCE_ROOT) for path in (SOURCE_ROOT / PROTO_DIR).glob("*.proto"))


def _mypy_grpc_plugin() -> str:
    """protoc-gen-mypy_grpc from this interpreter's environment (protoc runs it as a subprocess)."""
    found = shutil.which("protoc-gen-mypy_grpc", path=str(Path(sys.executable).parent)) or shutil.which(
        "protoc-gen-mypy_grpc"
    )
    if found is None:
        sys.exit("gen_protos: protoc-gen-mypy_grpc not found: pip install the test extras (mypy-protobuf)")
    return found


def generate(out_root: Path) -> list[Path]:
    """Compile every proto into ``out_root/ember/rpc/``; returns the files written, sorted."""
    check_generator_versions()
    out_dir = out_root / PROTO_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{SOURCE_ROOT}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy_grpc={_mypy_grpc_plugin()}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_grpc_out=quiet:{out_root}",
        *(str(path) for path in proto_files()),
    ]
    if protoc.main(args) != 0:
        sys.exit("gen_protos: protoc failed (its message is above)")
    return sorted(out_dir.glob("*_pb2*.py*"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-root",
        type=Path,
        default=SOURCE_ROOT,
        help="directory under which ember/rpc/ is written (default: the source tree)",
    )
    options = parser.parse_args(argv)
    for path in generate(options.out_root):
        print(path)


if __name__ == "__main__":
    main()

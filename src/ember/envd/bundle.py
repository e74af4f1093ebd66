"""Pack the agent package into one executable file: what the guest runs as ``/usr/bin/envd``.

The file is a zipapp (PEP 441)::

    #!/usr/bin/env python3\\n          shebang line
    zip archive                       envd_agent/<module>.py for every agent module
                                      envd_agent/<module>.pyc, its bytecode (unchecked-hash pyc)
                                      __main__.py: runs envd_agent.main()

Python never caches bytecode for modules imported from a zip, so without the ``.pyc``
entries the guest would compile the agent on every boot: about two seconds of a cold boot
under TCG. zipimport prefers a ``.pyc`` entry and falls back to the ``.py`` beside it when
the bytecode's magic number is not its own (a guest Python of another minor version).

The archive is deterministic: entries sorted by name, every timestamp 1980-01-01, fixed
permissions and compression, so the same sources always give the same bytes (and the
same rootfs blocks when the file is injected into a guest image).
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import zipfile
from pathlib import Path

from ember.errors import GuestError

ARCHIVE_PACKAGE = "envd_agent"
SHEBANG = b"#!/usr/bin/env python3\n"
_AGENT_DIR = Path(__file__).parent / "agent"
_MAIN = f"import sys\nfrom {ARCHIVE_PACKAGE} import main\n\nsys.exit(main())\n"
_EPOCH = (1980, 1, 1, 0, 0, 0)


def _entry(name: str, data: bytes) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    info.create_system = 3
    return info, data


def _bytecode(source: Path) -> bytes:
    """The module's bytecode as an unchecked-hash pyc: no timestamps, so the archive stays deterministic."""
    code = compile(source.read_bytes(), f"{ARCHIVE_PACKAGE}/{source.name}", "exec", dont_inherit=True)
    header = importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little")
    return header + importlib.util.source_hash(source.read_bytes()) + marshal.dumps(code)


def build_agent(path: Path | str) -> Path:
    """Write the agent to ``path`` (mode 0755, replaced atomically) and return the path.

    Raises ``GuestError`` when the file cannot be written.
    """
    target = Path(path)
    sources = sorted(_AGENT_DIR.glob("*.py"))
    entries = [_entry(f"{ARCHIVE_PACKAGE}/{source.name}", source.read_bytes()) for source in sources]
    entries += [_entry(f"{ARCHIVE_PACKAGE}/{source.stem}.pyc", _bytecode(source)) for source in sources]
    entries.append(_entry("__main__.py", _MAIN.encode()))
    partial = target.with_name(f".{target.name}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as handle:
            handle.write(SHEBANG)
            with zipfile.ZipFile(handle, "w") as archive:
                for info, data in sorted(entries, key=lambda entry: entry[0].filename):
                    archive.writestr(info, data, compresslevel=9)
        os.chmod(partial, 0o755)
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise GuestError(
            f"cannot write the envd agent to {target}: {exc}; check the directory is writable"
        ) from exc
    return target

"""The ``ember`` command: dispatch to one module per subcommand, and the error boundary.

Subcommands carry the seed's tool names. Each module exposes ``SUMMARY``,
``build_parser()`` and ``run(args) -> int``; this module is the only place that catches
``EmberError``: one line on stderr, exit 1 (usage errors exit 2), never a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType

from ember.cli.progress import Terminated
from ember.errors import EmberError, UsageError

__all__ = ["COMMANDS", "main"]

COMMANDS: dict[str, str] = {
    "create-build": "ember.cli.create_build",
    "resume-build": "ember.cli.resume_build",
    "inspect-build": "ember.cli.inspect_build",
    "show-build-diff": "ember.cli.show_build_diff",
    "copy-build": "ember.cli.copy_build",
    "clean-nfs-cache": "ember.cli.clean_nfs_cache",
    "hammer-file": "ember.cli.hammer_file",
    "mount-build-rootfs": "ember.cli.mount_build_rootfs",
    "orchestrator": "ember.cli.orchestrator",
    "serve": "ember.cli.serve",
    "api": "ember.cli.api",
    "api-key": "ember.cli.api_key",
    "gc": "ember.cli.gc",
}


def _usage() -> str:
    lines = ["usage: ember <command> [flags]", "", "commands:"]
    for name, module_name in COMMANDS.items():
        lines.append(f"  {name:<18} {_load(module_name).SUMMARY}")
    lines += ["", "Run 'ember <command> -help' for the flags of a command."]
    return "\n".join(lines)


def _load(module_name: str) -> ModuleType:
    return importlib.import_module(module_name)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "-help", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"ember: unknown command {name!r}; run 'ember -help' for the list", file=sys.stderr)
        return 2
    command = _load(COMMANDS[name])
    try:
        options = command.build_parser().parse_args(rest)
        code: int = command.run(options)
        return code
    except UsageError as exc:
        print(f"ember {name}: {exc}", file=sys.stderr)
        return 2
    except EmberError as exc:
        print(f"ember {name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ember {name}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"ember {name}: terminated by SIGTERM; the sandbox was stopped", file=sys.stderr)
        return 143
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug: still one line, with the traceback on request
        if os.environ.get("EMBER_DEBUG"):
            traceback.print_exc()
        print(
            f"ember {name}: internal error: {type(exc).__name__}: {exc} "
            "(set EMBER_DEBUG=1 to see the traceback and report it)",
            file=sys.stderr,
        )
        return 1

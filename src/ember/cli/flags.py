"""Flags the way the seed's Go tools read them, on top of argparse.

Users paste commands from the seed's README, so ``-to-build X``, ``--to-build X``,
``-to-build=X`` and Go's boolean forms (``-hugepages``, ``-hugepages=false``) must all
work. argparse already accepts multi-character single-dash options; what it lacks is
Go's rule that a boolean flag never takes the next word as its value, which
``FlagParser.parse_known_args`` adds by rewriting a bare boolean flag to ``-name=true``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

from ember.errors import UsageError

_TRUE = {"1", "t", "true", "T", "TRUE", "True"}
_FALSE = {"0", "f", "false", "F", "FALSE", "False"}


def parse_go_bool(text: str) -> bool:
    """Go's strconv.ParseBool, which the seed's flags use."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r} (use true or false)")


class FlagParser(argparse.ArgumentParser):
    """One subcommand's flags; errors become UsageError so the CLI prints one line."""

    def __init__(self, prog: str, description: str) -> None:
        super().__init__(
            prog=prog,
            description=description,
            allow_abbrev=False,
            add_help=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self._bool_spellings: set[str] = set()
        self.add_argument("-h", "-help", "--help", action="help", help="show this help and exit")

    def add_flag(
        self,
        name: str,
        *,
        help: str,
        metavar: str = "<value>",
        default: Any = None,
        type: Any = str,
        required: bool = False,
    ) -> None:
        """A flag that takes a value, spelled ``-name`` or ``--name``."""
        self.add_argument(
            f"-{name}",
            f"--{name}",
            dest=name.replace("-", "_"),
            metavar=metavar,
            default=default,
            type=type,
            required=required,
            help=help,
        )

    def add_bool(self, name: str, *, help: str, default: bool = False) -> None:
        """A Go boolean flag: ``-name`` is true, ``-name=false`` is false."""
        spellings = (f"-{name}", f"--{name}")
        self._bool_spellings.update(spellings)
        self.add_argument(
            *spellings,
            dest=name.replace("-", "_"),
            nargs="?",
            const=True,
            default=default,
            type=parse_go_bool,
            metavar="true|false",
            help=f"{help} (default {str(default).lower()})",
        )

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        rewritten: list[str] = []
        passthrough = False
        for arg in args or ():
            if passthrough:
                rewritten.append(arg)
                continue
            if arg == "--":
                passthrough = True
            rewritten.append(f"{arg}=true" if arg in self._bool_spellings else arg)
        return super().parse_known_args(rewritten, namespace)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; run '{self.prog} -help' for the flags")

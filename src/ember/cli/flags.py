"""Flags the way the seed's Go tools read them, on top of argparse.

Users paste commands from the seed's README, so ``-to-build X``, ``--to-build X``,
``-to-build=X`` and Go's boolean forms (``-hugepages``, ``-hugepages=false``) must all
work. argparse already accepts multi-character single-dash options; what it lacks are two
rules of Go's flag package, which ``FlagParser.parse_known_args`` adds by rewriting the
arguments before argparse sees them:

* a boolean flag never takes the next word as its value: ``-data /x`` -> ``-data=true /x``;
* a flag that takes a value takes the next word whatever it looks like: ``-start -5`` and
  ``-cmd -x`` -> ``-start=-5``, ``-cmd=-x`` (argparse would read ``-5`` as another flag);
  only ``--`` stays the end of the flags (argparse cannot hold it as a value).
"""

from __future__ import annotations

import argparse
import math
import sys
import uuid
from collections.abc import Sequence
from typing import Any, NoReturn

from ember.environment import parse_go_duration
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
        self._value_spellings: set[str] = set()
        self._spellings: set[str] = {"-h", "-help", "--help"}
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
        self._spellings.update((f"-{name}", f"--{name}"))
        self._value_spellings.update((f"-{name}", f"--{name}"))
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
        self._spellings.update(spellings)
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
        given = list(sys.argv[1:] if args is None else args)
        rewritten: list[str] = []
        position = 0
        while position < len(given):
            arg = given[position]
            position += 1
            if arg == "--":
                rewritten += given[position - 1 :]
                break
            if arg in self._value_spellings and position < len(given) and given[position] != "--":
                rewritten.append(f"{arg}={given[position]}")
                position += 1
                continue
            if arg.startswith("-") and len(arg) > 1 and arg.split("=", 1)[0] not in self._spellings:
                # argparse 3.11 matches prefixes of single-dash flags even with allow_abbrev off.
                self.error(f"flag provided but not defined: {arg.split('=', 1)[0]}")
            rewritten.append(f"{arg}=true" if arg in self._bool_spellings else arg)
        return super().parse_known_args(rewritten, namespace)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; run '{self.prog} -help' for the flags")


def build_id(text: str) -> uuid.UUID:
    """Argument type for build ids: the seed refuses anything but a UUID, and so do we."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a build id: expected a UUID such as the output of uuidgen"
        ) from None


def non_negative(text: str) -> int:
    """Argument type for counts and offsets."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def non_negative_float(text: str) -> float:
    """Argument type for amounts that may be zero (a percentage, a delay): finite and >= 0."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


def positive_float(text: str) -> float:
    """Argument type for durations and sizes that must be more than zero (a timeout in seconds)."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than zero")
    return value


def go_duration(text: str) -> float:
    """Seconds in a Go duration string such as ``48h``, ``1h30m`` or ``500ms`` (what -grace takes)."""
    try:
        return parse_go_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None

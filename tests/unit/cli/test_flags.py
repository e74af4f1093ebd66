import argparse
import math
import sys
import uuid

import pytest

from ember.cli.flags import (
    FlagParser,
    build_id,
    go_duration,
    non_negative,
    non_negative_float,
    positive_float,
)
from ember.errors import UsageError


def _parser() -> FlagParser:
    parser = FlagParser("ember demo", "a test command")
    parser.add_flag("to-build", help="output build", type=build_id)
    parser.add_flag("storage", help="where", default=".local-build")
    parser.add_flag("end", help="last block", type=non_negative, default=0)
    parser.add_flag("cmd", help="a command")
    parser.add_flag("offset", help="any integer", type=int, default=0)
    parser.add_bool("hugepages", help="2 MiB pages", default=True)
    parser.add_bool("data", help="read data")
    parser.add_argument("path", nargs="?")
    return parser


UUID = "8c4b2e5e-5f4a-4e0b-9a44-1b1f0b6b2a10"


@pytest.mark.parametrize(
    "argv",
    [
        ["-to-build", UUID],
        ["--to-build", UUID],
        [f"-to-build={UUID}"],
        [f"--to-build={UUID.upper()}"],
    ],
)
def test_every_go_and_gnu_spelling_of_a_value_flag_works(argv: list[str]) -> None:
    assert _parser().parse_args(argv).to_build == uuid.UUID(UUID)


def test_go_boolean_forms() -> None:
    parser = _parser()
    assert parser.parse_args([]).hugepages is True
    assert parser.parse_args(["-hugepages=false"]).hugepages is False
    assert parser.parse_args(["--hugepages=0"]).hugepages is False
    assert parser.parse_args(["-data"]).data is True
    assert parser.parse_args(["-data=true"]).data is True


def test_a_bare_boolean_flag_never_swallows_the_next_word() -> None:
    options = _parser().parse_args(["-data", "/some/path"])
    assert options.data is True
    assert options.path == "/some/path"


def test_non_uuid_build_id_is_a_usage_error_that_says_what_to_pass() -> None:
    with pytest.raises(UsageError, match="not a build id: expected a UUID"):
        _parser().parse_args(["-to-build", "my-build"])


def test_unknown_flag_and_bad_bool_are_usage_errors_pointing_at_help() -> None:
    with pytest.raises(UsageError, match=r"run 'ember demo -help'"):
        _parser().parse_args(["-nope"])
    with pytest.raises(UsageError, match="invalid boolean value 'maybe'"):
        _parser().parse_args(["-data=maybe"])
    with pytest.raises(UsageError, match="must not be negative"):
        _parser().parse_args(["-end=-5"])


def test_abbreviations_are_refused_like_go() -> None:
    with pytest.raises(UsageError, match="flag provided but not defined: -stor"):
        _parser().parse_args(["-stor", "x"])


@pytest.mark.parametrize(
    ("text", "seconds"), [("48h", 172800.0), ("1h30m", 5400.0), ("500ms", 0.5), ("0", 0.0), ("1.5s", 1.5)]
)
def test_go_durations(text: str, seconds: float) -> None:
    assert go_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "48", "2d", "h", "1h 30m"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="invalid duration"):
        go_duration(text)


@pytest.mark.parametrize(
    ("argv", "cmd", "offset"),
    [
        (["-cmd", "-x"], "-x", 0),
        (["--cmd", "--verbose", "-data"], "--verbose", 0),
        (["-offset", "-5", "-cmd", "ls -la"], "ls -la", -5),
        (["-cmd", "-data"], "-data", 0),
        (["-cmd=-y", "-offset=-3"], "-y", -3),
        (["-cmd", "a=b"], "a=b", 0),
    ],
)
def test_a_value_flag_takes_the_next_word_even_when_it_starts_with_a_dash(
    argv: list[str], cmd: str, offset: int
) -> None:
    options = _parser().parse_args(argv)
    assert (options.cmd, options.offset) == (cmd, offset)


def test_a_negative_count_given_as_the_next_word_is_refused_for_what_it_is() -> None:
    with pytest.raises(UsageError, match="-5 must not be negative"):
        _parser().parse_args(["-end", "-5"])


def test_flags_default_to_the_process_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["ember-demo", "-cmd", "-x", "-data"])
    options = _parser().parse_args()
    assert (options.cmd, options.data) == ("-x", True)


@pytest.mark.parametrize("text", ["-1", "-0.5", "nan", "inf", "-inf", "1e400", "five"])
def test_non_negative_float_refuses_negative_and_non_finite_values(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        non_negative_float(text)


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "1e400"])
def test_positive_float_refuses_zero_negative_and_non_finite_values(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        positive_float(text)


def test_float_flags_accept_ordinary_values() -> None:
    assert non_negative_float("0") == 0.0
    assert positive_float("2.5") == 2.5
    assert math.isclose(positive_float("1e-3"), 0.001)


def test_a_timeout_flag_typed_positive_float_refuses_minus_one() -> None:
    parser = FlagParser("ember demo", "a test command")
    parser.add_flag("timeout", help="seconds", type=positive_float, default=5.0)
    assert parser.parse_args(["-timeout", "0.5"]).timeout == 0.5
    with pytest.raises(UsageError, match="-1 must be greater than zero"):
        parser.parse_args(["-timeout=-1"])
    with pytest.raises(UsageError, match="-1 must be greater than zero"):
        parser.parse_args(["-timeout", "-1"])


def test_a_duration_too_long_to_represent_is_refused() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="too long"):
        go_duration("9" * 400 + "h")

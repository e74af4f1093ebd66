"""The list endpoints' pure parts: the cursor, RFC 3339 with nanoseconds, the metadata filter."""

from __future__ import annotations

import base64
import datetime as dt
import urllib.parse

import httpx
import pytest

from ember.api.errors import ApiError
from ember.api.listing import Cursor, parse_metadata_filter, parse_rfc3339_nano, rfc3339_nano


def test_rfc3339_nano_is_gos_format() -> None:
    moment = dt.datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=dt.UTC)
    assert rfc3339_nano(moment) == "2026-01-02T03:04:05.12Z"
    assert rfc3339_nano(moment.replace(microsecond=0)) == "2026-01-02T03:04:05Z"
    assert parse_rfc3339_nano("2026-01-02T03:04:05.120000789Z") == moment
    assert parse_rfc3339_nano("2026-01-02T05:04:05.12+02:00") == moment


def test_the_cursor_is_base64url_of_time_and_id_with_asc_suffix() -> None:
    moment = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    token = Cursor(moment, "iabc", ascending=True).encode()
    assert base64.urlsafe_b64decode(token).decode() == "2026-01-02T03:04:05Z__iabc__asc"
    assert Cursor.decode(token) == Cursor(moment, "iabc", True)
    assert Cursor.decode(token.rstrip("=")) == Cursor(moment, "iabc", True)
    assert Cursor.decode(Cursor(moment, "iabc", False).encode()).ascending is False


@pytest.mark.parametrize("token", ["!!", base64.urlsafe_b64encode(b"no-separator").decode(), "aGVsbG8"])
def test_bad_cursors_are_400(token: str) -> None:
    with pytest.raises(ApiError) as caught:
        Cursor.decode(token)
    assert caught.value.status == 400


def _as_the_sdk_sends(metadata: dict[str, str]) -> str:
    """The SDK quotes keys and values, urlencodes the pairs; httpx then encodes the parameter."""
    quoted = {urllib.parse.quote(k): urllib.parse.quote(v) for k, v in metadata.items()}
    url = httpx.URL("http://x/v2/sandboxes", params={"metadata": urllib.parse.urlencode(quoted)})
    # what aiohttp hands the handler: the query value decoded once
    return dict(urllib.parse.parse_qsl(url.query.decode()))["metadata"]


@pytest.mark.parametrize(
    "metadata",
    [{"k": "v w"}, {"a": "1", "b": "2"}, {"odd": "x&y=z+%"}, {"ünï": "cødé"}, {"empty": ""}],
)
def test_the_metadata_filter_undoes_the_sdks_three_encodings(metadata: dict[str, str]) -> None:
    assert parse_metadata_filter(_as_the_sdk_sends(metadata)) == metadata


def test_the_captured_metadata_example_decodes() -> None:
    assert _as_the_sdk_sends({"k": "v w"}) == "k=v%2520w"
    assert parse_metadata_filter("k=v%2520w") == {"k": "v w"}


def test_a_metadata_filter_without_pairs_is_400() -> None:
    with pytest.raises(ApiError):
        parse_metadata_filter("novalue")
    assert parse_metadata_filter(None) == {}

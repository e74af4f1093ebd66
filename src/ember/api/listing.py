"""``GET /sandboxes`` (v1) and ``GET /v2/sandboxes``: filters, order and the ``X-Next-Token`` cursor.

v2 merges running sandboxes (the catalog; a pausing one shows as paused) with paused ones
(the store's snapshots), sorts them by ``startedAt`` then id (descending unless
``order=asc``) and cuts pages of ``limit`` (1-100, default 100). The cursor names the last
item of a page: ``base64url("<RFC3339Nano startedAt>__<sandboxID>")``, with ``__asc`` appended
for ascending lists; the next page starts strictly after it. ``X-Total-Running`` counts the
running sandboxes that match, when running ones were asked for.

The ``metadata`` filter arrives encoded three times (the SDK quotes keys and values, url-
encodes the pairs, and the query string encodes that again): aiohttp undoes the first, then
the whole value is unquoted, then each pair is split and unquoted, as the original does.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ember.api.catalog import SandboxState
from ember.api.errors import bad_request
from ember.api.ids import parse_template_ref
from ember.api.plane import ControlPlane
from ember.api.records import SandboxSpec, Team
from ember.api.requests import query_int
from ember.api.views import listed_paused, listed_running

DEFAULT_LIMIT = 100
MAX_LIMIT = 100
STATES = ("running", "paused")
NEXT_TOKEN_HEADER = "X-Next-Token"
TOTAL_RUNNING_HEADER = "X-Total-Running"
_ASC_SUFFIX = "__asc"
_NANO = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def rfc3339_nano(moment: dt.datetime) -> str:
    """Go's ``time.RFC3339Nano``: trailing zeros of the fraction dropped, ``Z`` for UTC."""
    moment = moment.astimezone(dt.UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += "." + f"{moment.microsecond:06d}000".rstrip("0")
    return text + "Z"


def parse_rfc3339_nano(text: str) -> dt.datetime:
    match = _NANO.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 time")
    base, fraction, zone = match.groups()
    micro = int((fraction or "0").ljust(6, "0")[:6])
    moment = dt.datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return moment.replace(microsecond=micro).astimezone(dt.UTC)


@dataclass(frozen=True)
class Cursor:
    started_at: dt.datetime
    item_id: str
    ascending: bool

    def encode(self) -> str:
        text = f"{rfc3339_nano(self.started_at)}__{self.item_id}" + (_ASC_SUFFIX if self.ascending else "")
        return base64.urlsafe_b64encode(text.encode()).decode()

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            padded = token + "=" * (-len(token) % 4)
            text = base64.urlsafe_b64decode(padded.encode()).decode()
            ascending = text.endswith(_ASC_SUFFIX)
            stamp, sep, item_id = text.removesuffix(_ASC_SUFFIX).partition("__")
            if not sep or not item_id:
                raise ValueError("no separator")
            return cls(parse_rfc3339_nano(stamp), item_id, ascending)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise bad_request(f"Invalid next token {token!r}") from None


def parse_metadata_filter(value: str | None) -> dict[str, str]:
    """``metadata=`` as the SDK sends it (see the module docstring); ApiError 400 when malformed."""
    if not value:
        return {}
    try:
        pairs = urllib.parse.parse_qsl(
            urllib.parse.unquote_plus(value), keep_blank_values=True, strict_parsing=True
        )
    except ValueError:
        raise bad_request(
            f'Invalid metadata filter "{value}": expected key=value pairs joined by &'
        ) from None
    return dict(pairs)


def matches_metadata(spec: SandboxSpec, wanted: Mapping[str, str]) -> bool:
    return all(spec.metadata.get(key) == value for key, value in wanted.items())


@dataclass(frozen=True)
class _Item:
    started_at: dt.datetime
    item_id: str
    running: bool
    body: dict[str, Any]


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_token: str | None
    total_running: int | None


def _sort_and_cut(
    items: list[_Item], ascending: bool, cursor: Cursor | None, limit: int
) -> tuple[list[_Item], bool]:
    items.sort(key=lambda item: (item.started_at, item.item_id), reverse=not ascending)
    if cursor is not None:
        mark = (cursor.started_at, cursor.item_id)
        after: Callable[[_Item], bool] = (
            (lambda item: (item.started_at, item.item_id) > mark)
            if ascending
            else (lambda item: (item.started_at, item.item_id) < mark)
        )
        items = [item for item in items if after(item)]
    return items[:limit], len(items) > limit


async def list_v2(plane: ControlPlane, team: Team, request: web.Request) -> Page:
    query = request.query
    states = _states(query.get("state"))
    order = query.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise bad_request(f'Invalid order "{order}": use asc or desc')
    ascending = order == "asc"
    limit = query_int(request, "limit", DEFAULT_LIMIT) or 0
    if not 1 <= limit <= MAX_LIMIT:
        raise bad_request(f"limit must be between 1 and {MAX_LIMIT}")
    token = query.get("nextToken")
    cursor = Cursor.decode(token) if token else None
    if cursor is not None and cursor.ascending != ascending:
        raise bad_request("Invalid next token: it was made for the other order")
    wanted = parse_metadata_filter(query.get("metadata"))
    started_after = _started_after(query.get("startedAfter"))
    template = await _template_filter(plane, query.get("template"))

    def keep(spec: SandboxSpec, started_at: dt.datetime) -> bool:
        return (
            matches_metadata(spec, wanted)
            and (started_after is None or started_at >= started_after)
            and (template is None or spec.base_template_id in template)
        )

    items: list[_Item] = []
    total_running = 0
    live_ids = []
    for live in plane.catalog.of_team(team.id):
        live_ids.append(live.sandbox_id)
        if live.state is SandboxState.KILLING:
            continue
        state = "paused" if live.state is SandboxState.PAUSING else "running"
        record = live.record
        if state in states and keep(record.spec, record.started_at):
            total_running += state == "running"
            items.append(_Item(record.started_at, record.sandbox_id, True, listed_running(record, state)))
    if "paused" in states:
        for snapshot in await plane.store.list_snapshots(team.id, exclude=live_ids):
            if keep(snapshot.spec, snapshot.started_at):
                items.append(_Item(snapshot.started_at, snapshot.sandbox_id, False, listed_paused(snapshot)))
    page, more = _sort_and_cut(items, ascending, cursor, limit)
    next_token = Cursor(page[-1].started_at, page[-1].item_id, ascending).encode() if more and page else None
    return Page([item.body for item in page], next_token, total_running if "running" in states else None)


def list_v1(plane: ControlPlane, team: Team, request: web.Request) -> list[dict[str, Any]]:
    """Running sandboxes only, newest first, no pages."""
    wanted = parse_metadata_filter(request.query.get("metadata"))
    lives = [
        live
        for live in plane.catalog.of_team(team.id)
        if live.state in (SandboxState.RUNNING, SandboxState.SNAPSHOTTING)
        and matches_metadata(live.record.spec, wanted)
    ]
    lives.sort(key=lambda live: (live.record.started_at, live.sandbox_id), reverse=True)
    return [listed_running(live.record, "running") for live in lives]


def _states(value: str | None) -> Sequence[str]:
    if not value:
        return STATES
    states = [part.strip() for part in value.split(",") if part.strip()]
    for state in states:
        if state not in STATES:
            raise bad_request(f'Invalid state "{state}": use running and/or paused')
    return states


def _started_after(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise bad_request(f'Invalid startedAfter "{value}": use an RFC 3339 time') from None
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment


async def _template_filter(plane: ControlPlane, value: str | None) -> set[str] | None:
    """The template ids ``template=`` names (a tag is refused); an unknown name matches nothing."""
    if not value:
        return None
    if ":" in value:
        raise bad_request(f'Invalid template "{value}": the template filter takes no tag')
    ref = parse_template_ref(value)
    found = await plane.store.find_template(ref.name)
    return {found.id} if found is not None else {ref.name}

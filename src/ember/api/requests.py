"""Request bodies and query strings, checked field by field before anything acts on them.

A malformed body is always a 400 with a JSON error saying which field is wrong: never a
traceback, never a half-done action. Unknown fields are ignored (the original's schema
allows them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NoReturn

from aiohttp import web

from ember.api.errors import bad_request

_PREFIX = "Invalid request body"


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


async def read_body(request: web.Request, required: bool) -> Body:
    """The request's JSON object; an empty body is ``{}`` unless ``required``."""
    data = await request.read()
    if not data.strip():
        if required:
            raise bad_request(f"{_PREFIX}: the body is empty: send a JSON object")
        return Body({})
    try:
        value = json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"{_PREFIX}: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise bad_request(f"{_PREFIX}: expected a JSON object, got {type(value).__name__}")
    return Body(value)


class Body:
    """A JSON object with typed getters; each raises ApiError 400 naming the field."""

    def __init__(self, data: Mapping[str, Any], path: str = "") -> None:
        self.data = data
        self._path = path

    def __contains__(self, name: str) -> bool:
        return name in self.data

    def _name(self, name: str) -> str:
        return f"{self._path}{name}"

    def _wrong(self, name: str, expected: str) -> NoReturn:
        raise bad_request(f'{_PREFIX}: "{self._name(name)}" must be {expected}')

    def _get(self, name: str, required: bool) -> Any:
        value = self.data.get(name)
        if value is None and required:
            raise bad_request(f'{_PREFIX}: "{self._name(name)}" is required')
        return value

    def text(self, name: str, required: bool = False) -> str | None:
        value = self._get(name, required)
        if value is not None and not isinstance(value, str):
            self._wrong(name, "a string")
        return value

    def integer(self, name: str, required: bool = False) -> int | None:
        value = self._get(name, required)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            self._wrong(name, "an integer")
        if value is not None and not -(2**63) <= value < 2**63:
            self._wrong(name, "a 64-bit integer")
        return value

    def flag(self, name: str, required: bool = False) -> bool | None:
        value = self._get(name, required)
        if value is not None and not isinstance(value, bool):
            self._wrong(name, "true or false")
        return value

    def text_map(self, name: str) -> dict[str, str] | None:
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            self._wrong(name, "an object of strings")
        return dict(value)

    def texts(self, name: str) -> list[str] | None:
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self._wrong(name, "a list of strings")
        return list(value)

    def integers(self, name: str) -> list[int] | None:
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            self._wrong(name, "a list of integers")
        return list(value)

    def array(self, name: str) -> list[Any] | None:
        value = self._get(name, False)
        if value is not None and not isinstance(value, list):
            self._wrong(name, "a list")
        return value

    def child(self, name: str) -> Body | None:
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, dict):
            self._wrong(name, "an object")
        return Body(value, f"{self._name(name)}.")

    def present(self, name: str) -> bool:
        """Whether ``name`` is there and not null (an explicit null means "not given")."""
        return self.data.get(name) is not None


def query_int(request: web.Request, name: str, default: int | None = None) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise bad_request(f'Invalid query: "{name}" must be an integer, got {text!r}') from None

"""Request bodies: typed getters that name the wrong field in a 400."""

from __future__ import annotations

import pytest

from ember.api.errors import ApiError
from ember.api.requests import Body


def _message(call: object) -> str:
    with pytest.raises(ApiError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.status == 400
    return caught.value.message


def test_getters_check_types_and_treat_null_as_absent() -> None:
    body = Body({"s": "x", "i": 3, "b": True, "n": None, "m": {"a": "b"}, "l": ["x"], "o": {"deep": 1}})
    assert (body.text("s"), body.integer("i"), body.flag("b"), body.text("n")) == ("x", 3, True, None)
    assert body.text_map("m") == {"a": "b"} and body.texts("l") == ["x"]
    child = body.child("o")
    assert child is not None
    assert '"o.deep" must be a string' in _message(lambda: child.text("deep"))
    assert '"i" must be a string' in _message(lambda: body.text("i"))
    assert '"b" must be an integer' in _message(lambda: body.integer("b"))
    assert '"s" must be true or false' in _message(lambda: body.flag("s"))
    assert '"missing" is required' in _message(lambda: body.text("missing", required=True))
    assert '"n" is required' in _message(lambda: body.integer("n", required=True))
    assert "64-bit" in _message(lambda: Body({"i": 2**70}).integer("i"))

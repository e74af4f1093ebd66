"""Sandbox ids, path ids, template references and tokens, by E2B's rules."""

from __future__ import annotations

import re

import pytest

from ember.api.errors import INVALID_SANDBOX_ID, ApiError
from ember.api.ids import (
    TemplateRef,
    check_alias,
    new_sandbox_id,
    new_template_id,
    parse_sandbox_id,
    parse_template_ref,
)
from ember.api.tokens import TokenMinter, tokens_match


def test_new_ids_have_the_originals_shape() -> None:
    assert re.fullmatch(r"i[a-z0-9]{20}", new_sandbox_id())
    assert re.fullmatch(r"[a-z0-9]{20}", new_template_id())
    assert len({new_sandbox_id() for _ in range(100)}) == 100


@pytest.mark.parametrize(("path_id", "expected"), [("iabc", "iabc"), ("iabc-6532622b", "iabc")])
def test_path_ids_drop_the_client_suffix(path_id: str, expected: str) -> None:
    assert parse_sandbox_id(path_id) == expected


@pytest.mark.parametrize("path_id", ["a-b-c", "IABC", "i.abc", "", "-x", "i_abc"])
def test_bad_path_ids_are_400_invalid_sandbox_id(path_id: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_sandbox_id(path_id)
    assert (caught.value.status, caught.value.message) == (400, INVALID_SANDBOX_ID)


@pytest.mark.parametrize(
    ("reference", "parsed"),
    [
        ("base", TemplateRef(None, "base", None)),
        ("  Base ", TemplateRef(None, "base", None)),
        ("team/my_tpl:v1.2", TemplateRef("team", "my_tpl", "v1.2")),
        ("my-tpl:default", TemplateRef(None, "my-tpl", None)),
    ],
)
def test_template_references(reference: str, parsed: TemplateRef) -> None:
    assert parse_template_ref(reference) == parsed


@pytest.mark.parametrize("reference", ["", "a b", "a/b/c", "x:", "x:bad tag", "ns!/x"])
def test_bad_template_references_are_400(reference: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_template_ref(reference)
    assert caught.value.status == 400


def test_a_registered_name_carries_no_tag() -> None:
    assert check_alias("Team/Snap") == "team/snap"
    with pytest.raises(ApiError):
        check_alias("snap:default")


def test_tokens_are_hmacs_of_the_seed_and_differ_per_purpose() -> None:
    minter = TokenMinter("seed")
    assert minter.envd_token("iabc") == TokenMinter("seed").envd_token("iabc")
    assert minter.envd_token("iabc") != TokenMinter("other").envd_token("iabc")
    assert minter.envd_token("iabc") != minter.traffic_token("iabc")
    # hex(HMAC-SHA256("seed", "iabc")), computed independently
    import hashlib
    import hmac

    assert minter.envd_token("iabc") == hmac.new(b"seed", b"iabc", hashlib.sha256).hexdigest()
    assert (
        minter.traffic_token("iabc") == hmac.new(b"seed", b"sandbox-traffic-iabc", hashlib.sha256).hexdigest()
    )
    assert tokens_match(minter.envd_token("iabc"), minter.envd_token("iabc"))
    assert not tokens_match(None, "x") and not tokens_match("y", "x")

"""Signed /files URLs: the signature rule, computed here independently, and the refusals."""

from __future__ import annotations

import base64
import hashlib

import pytest

from ember.envd.agent import signing

TOKEN = "access-token-123"
NOW = 1_700_000_000


def _expected(raw: str) -> str:
    """``v1_`` + unpadded standard base64 of sha256(raw), spelled out without the agent's code."""
    digest = hashlib.sha256(raw.encode()).digest()
    return "v1_" + base64.b64encode(digest).decode().replace("=", "")


def test_signature_without_expiration_signs_path_operation_user_and_token() -> None:
    assert signing.file_signature("/home/user/a.txt", "read", "user", TOKEN) == _expected(
        f"/home/user/a.txt:read:user:{TOKEN}"
    )


def test_signature_with_expiration_appends_it_and_no_user_signs_as_empty() -> None:
    signed = signing.file_signature("rel/b c.bin", "write", None, TOKEN, 1_800_000_000)
    assert signed == _expected(f"rel/b c.bin:write::{TOKEN}:1800000000")
    assert signing.file_signature("x", "write", "", TOKEN) == signing.file_signature(
        "x", "write", None, TOKEN
    )


def test_signature_uses_the_standard_alphabet_with_padding_stripped() -> None:
    signed = signing.file_signature("/", "read", None, TOKEN)
    body = signed.removeprefix("v1_")
    assert len(body) == 43 and "=" not in body  # 32 bytes -> 44 base64 chars with one "="
    assert base64.b64decode(body + "=") == hashlib.sha256(f"/:read::{TOKEN}".encode()).digest()


def test_signature_matches_the_e2b_sdk() -> None:
    sdk = pytest.importorskip("e2b.sandbox.signature")
    made = sdk.get_signature("/tmp/x y", "read", None, TOKEN, 60)
    assert signing.file_signature("/tmp/x y", "read", None, TOKEN, made["expiration"]) == made["signature"]
    plain = sdk.get_signature("/tmp/x", "write", "root", TOKEN)
    assert signing.file_signature("/tmp/x", "write", "root", TOKEN) == plain["signature"]


def _query(
    path: str, operation: str, user: str | None = None, expiration: int | None = None
) -> dict[str, str]:
    query = {"path": path, "signature": signing.file_signature(path, operation, user, TOKEN, expiration)}
    if user is not None:
        query["username"] = user
    if expiration is not None:
        query["signature_expiration"] = str(expiration)
    return query


def test_a_valid_signature_passes_until_and_including_its_expiration_second() -> None:
    signing.verify_signed_query(_query("/a", "read"), "read", TOKEN, NOW)
    signing.verify_signed_query(_query("/a", "write", "root", NOW), "write", TOKEN, NOW + 0.9)


@pytest.mark.parametrize(
    ("query", "operation", "status", "complaint"),
    [
        ({**_query("/a", "read"), "path": "/b"}, "read", 401, "invalid signature"),
        (_query("/a", "read"), "write", 401, "invalid signature"),
        ({**_query("/a", "read"), "username": "root"}, "read", 401, "invalid signature"),
        ({**_query("/a", "read", expiration=NOW + 60), "signature_expiration": str(NOW + 99)}, "read", 401,
         "invalid signature"),
        (_query("/a", "read", expiration=NOW - 1), "read", 401, "expired"),
        ({**_query("/a", "read"), "signature_expiration": "soon"}, "read", 400, "not a Unix time"),
        ({"path": "/a"}, "read", 401, "X-Access-Token"),
    ],
)  # fmt: skip
def test_refusals(query: dict[str, str], operation: str, status: int, complaint: str) -> None:
    with pytest.raises(signing.SignatureRefused, match=complaint) as caught:
        signing.verify_signed_query(query, operation, TOKEN, NOW)
    assert caught.value.status == status


def test_a_signature_made_with_another_token_is_refused() -> None:
    query = {"path": "/a", "signature": signing.file_signature("/a", "read", None, "other-token")}
    with pytest.raises(signing.SignatureRefused, match="invalid signature"):
        signing.verify_signed_query(query, "read", TOKEN, NOW)

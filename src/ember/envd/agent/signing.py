"""Signed ``/files`` URLs: how a secured sandbox lets a browser or curl in without its token.

The SDK's ``download_url``/``upload_url`` put the signature in the query string::

    /files?path=<path>[&username=<user>]&signature=v1_<sig>[&signature_expiration=<unix s>]

    sig = base64(sha256("<path>:<read|write>:<user>:<access token>[:<expiration>]"))

with the standard base64 alphabet and its ``=`` padding stripped. ``path`` and ``user`` are
the query values exactly as sent (an absent ``username`` signs as the empty string, which
means /init's default user); ``read`` is for ``GET``, ``write`` for ``POST``. A URL
without an expiration never expires; one with it is refused once the current Unix time
is past it (the expiration second itself is still valid).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

READ = "read"
WRITE = "write"
SIGNATURE_PREFIX = "v1_"


class SignatureRefused(ValueError):
    """The query does not authorize the request; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def file_signature(
    path: str, operation: str, username: str | None, access_token: str, expiration: int | None = None
) -> str:
    """The ``signature`` query value for ``operation`` (``read``/``write``) on ``path``."""
    fields = [path, operation, username or "", access_token]
    if expiration is not None:
        fields.append(str(expiration))
    digest = hashlib.sha256(":".join(fields).encode()).digest()
    return SIGNATURE_PREFIX + base64.b64encode(digest).decode().rstrip("=")


def verify_signed_query(query: Mapping[str, str], operation: str, access_token: str, now_s: float) -> None:
    """Return when ``query`` carries a valid, unexpired signature; raise ``SignatureRefused`` otherwise."""
    signature = query.get("signature")
    if not signature:
        raise SignatureRefused(
            401,
            "unauthorized access: send the sandbox's access token in X-Access-Token, "
            "or use a signed URL (signature query parameter)",
        )
    raw_expiration = query.get("signature_expiration")
    expiration: int | None = None
    if raw_expiration is not None:
        try:
            expiration = int(raw_expiration)
        except ValueError:
            raise SignatureRefused(
                400, f"signature_expiration {raw_expiration!r} is not a Unix time in seconds"
            ) from None
    expected = file_signature(
        query.get("path", ""), operation, query.get("username"), access_token, expiration
    )
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise SignatureRefused(
            401,
            f"invalid signature: it does not sign {operation} of this path and user with the sandbox's "
            "access token",
        )
    if expiration is not None and expiration < int(now_s):
        raise SignatureRefused(401, f"signature expired at {expiration} (now {int(now_s)}): sign a new URL")

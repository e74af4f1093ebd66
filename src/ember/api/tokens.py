"""The per-sandbox secrets, derived from one seed so a resume re-derives the same ones.

``envdAccessToken = hex(HMAC-SHA256(seed, sandboxID))`` authorizes calls to the sandbox's
envd (header ``X-Access-Token``); ``trafficAccessToken = hex(HMAC-SHA256(seed,
"sandbox-traffic-" + sandboxID))`` authorizes traffic to a sandbox with private ingress
(header ``e2b-traffic-access-token``). The seed is made once and kept in the database.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SEED_BYTES = 32


def new_seed() -> str:
    return secrets.token_hex(SEED_BYTES)


class TokenMinter:
    """Derives both tokens of a sandbox from the deployment's seed."""

    def __init__(self, seed: str) -> None:
        self._key = seed.encode()

    def envd_token(self, sandbox_id: str) -> str:
        return hmac.new(self._key, sandbox_id.encode(), hashlib.sha256).hexdigest()

    def traffic_token(self, sandbox_id: str) -> str:
        return hmac.new(self._key, f"sandbox-traffic-{sandbox_id}".encode(), hashlib.sha256).hexdigest()


def tokens_match(given: str | None, expected: str) -> bool:
    """Constant-time comparison; a missing token never matches."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())

"""``Idempotency-Key`` on ``POST /v2/sandboxes``: a retried create gets the first answer back.

The SDK sends the header only when the caller passes ``idempotency_key`` and reuses it on its
retries. The same key with the same body, once answered, replays the answer; while the first
request still runs it is 409 ``idempotency_in_progress``; with another body it is 409
``idempotency_request_mismatch``. Only successes are remembered (a failed create may be
tried again), for ``TTL_S``, in memory: a restarted API forgets them.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ember.api.errors import ApiError, bad_request

HEADER = "Idempotency-Key"
TTL_S = 3600.0
MAX_KEYS = 10_000
_KEY = re.compile(r"[a-z0-9-]{1,255}")


@dataclass
class _Entry:
    digest: str
    answer: tuple[int, Any] | None
    stored_s: float


class IdempotencyCache:
    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    async def run(
        self, team_id: str, key: str | None, body: bytes, call: Callable[[], Awaitable[tuple[int, Any]]]
    ) -> tuple[int, Any]:
        if key is None:
            return await call()
        if not _KEY.fullmatch(key):
            raise bad_request(f"{HEADER} must be 1-255 characters of a-z, 0-9 and -")
        self._expire()
        digest = hashlib.sha256(body).hexdigest()
        slot = (team_id, key)
        entry = self._entries.get(slot)
        if entry is not None:
            if entry.digest != digest:
                raise ApiError(
                    409,
                    f"{HEADER} {key!r} was used with another request body",
                    "idempotency_request_mismatch",
                )
            if entry.answer is None:
                raise ApiError(
                    409, f"a request with {HEADER} {key!r} is still in progress", "idempotency_in_progress"
                )
            return entry.answer
        entry = self._entries[slot] = _Entry(digest, None, time.monotonic())
        try:
            answer = await call()
        except BaseException:
            self._entries.pop(slot, None)
            raise
        entry.answer = answer
        return answer

    def _expire(self) -> None:
        """Drop the oldest entries past ``TTL_S``, and any beyond ``MAX_KEYS``."""
        deadline = time.monotonic() - TTL_S
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.stored_s > deadline and len(self._entries) <= MAX_KEYS:
                break
            self._entries.popitem(last=False)

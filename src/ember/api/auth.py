"""API keys: ``e2b_`` + 40 hex digits, shown once, stored as their SHA-256.

Keys are random (160 bits), so a plain SHA-256 is enough to store them: nobody can
brute-force a preimage, and the lookup stays one indexed equality.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid

from ember.api.records import ApiKey
from ember.api.store import Store

KEY_PREFIX = "e2b_"
KEY_HEX_DIGITS = 40


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_hex(KEY_HEX_DIGITS // 2)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def mask_api_key(key: str) -> str:
    """What listings show: the prefix and the last four digits."""
    return f"{KEY_PREFIX}...{key[-4:]}"


def looks_like_api_key(key: str) -> bool:
    return key.startswith(KEY_PREFIX) and len(key) > len(KEY_PREFIX)


async def add_api_key(store: Store, name: str, key: str | None = None) -> str:
    """Give the default team an API key named ``name`` (a new one unless ``key``); the key."""
    key = key or new_api_key()
    team = await store.default_team()
    record = ApiKey(str(uuid.uuid4()), team.id, name, mask_api_key(key), dt.datetime.now(dt.UTC))
    await store.add_api_key(record, hash_api_key(key))
    return key

"""The embedded store: one SQLite file in WAL mode, one connection, one writer thread.

A new database file is made readable by its owner only: it holds the seed every sandbox
token derives from (SQLite gives its ``-wal`` and ``-shm`` files the same mode).
``busy_timeout`` makes a second process (``ember api-key create`` while ``ember api`` runs)
wait for the write lock instead of failing at once. Write transactions are ``BEGIN
IMMEDIATE``: they take the lock when they start, so they never fail half-way on an upgrade.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ember.api.store.base import StoreConflict, StoreError
from ember.api.store.sql import Row, SqlStore

BUSY_TIMEOUT_MS = 10_000


class SqliteStore(SqlStore):
    types: ClassVar[dict[str, str]] = {"ts": "TEXT", "json": "TEXT", "blob": "BLOB", "bool": "BOOLEAN"}

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path = url.removeprefix("sqlite://")
        if not self.path:
            raise StoreError(f"database URL {url!r} names no file: use sqlite:///absolute/path.db")
        self._db: sqlite3.Connection | None = None
        self._depth = 0

    def _connect(self) -> None:
        if self.path != ":memory:":
            path = Path(self.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():  # it holds the token seed: readable by its owner only
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        self._db = db

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _execute(self, query: str, params: Sequence[Any] = ()) -> list[Row]:
        if self._db is None:
            raise StoreError(f"the store {self.url} is not open")
        return self._db.execute(query, tuple(params)).fetchall()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; nested uses join the outer transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._execute("ROLLBACK")
            raise
        self._depth = 0
        self._execute("COMMIT")

    def _migration_lock(self) -> contextlib.AbstractContextManager[None]:
        return self._transaction()

    def _driver_error(self, exc: Exception) -> StoreError | None:
        if isinstance(exc, sqlite3.IntegrityError):
            return StoreConflict(f"the database {self.url} refused a duplicate: {exc}")
        if isinstance(exc, sqlite3.Error):
            return StoreError(f"the database {self.url} failed: {exc}")
        return None

    def _ts_in(self, value: dt.datetime | None) -> Any:
        if value is None:
            return None
        return value.astimezone(dt.UTC).isoformat(timespec="microseconds")

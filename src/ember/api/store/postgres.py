"""The PostgreSQL store, through psycopg 3 (its pure-Python layer over the system's libpq).

One connection in autocommit mode; ``transaction()`` for multi-statement writes (psycopg
nests them as savepoints). A broken connection is dropped and made again on the next call.
Migrations run under an advisory lock, so API processes starting together migrate once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import psycopg
from psycopg.types.json import Jsonb

from ember.api.store.base import StoreConflict, StoreError
from ember.api.store.sql import Row, SqlStore

CONNECT_TIMEOUT_S = 10
_MIGRATION_LOCK_KEY = 0x656D626572  # "ember"


class PostgresStore(SqlStore):
    types: ClassVar[dict[str, str]] = {
        "ts": "TIMESTAMPTZ",
        "json": "JSONB",
        "blob": "BYTEA",
        "bool": "BOOLEAN",
    }

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._db: psycopg.Connection[Any] | None = None

    def _connect(self) -> None:
        self._db = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed:
            self._connect()
        assert self._db is not None
        return self._db

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _execute(self, query: str, params: Sequence[Any] = ()) -> list[Row]:
        db = self._connection()
        try:
            cursor = db.execute(query.replace("?", "%s"), tuple(params))
            return list(cursor.fetchall()) if cursor.description is not None else []
        except psycopg.OperationalError:
            self._disconnect()  # the next call connects again
            raise

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._connection().transaction():
            yield

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        self._execute("SELECT pg_advisory_lock(?)", (_MIGRATION_LOCK_KEY,))
        try:
            yield
        finally:
            self._execute("SELECT pg_advisory_unlock(?)", (_MIGRATION_LOCK_KEY,))

    def _driver_error(self, exc: Exception) -> StoreError | None:
        if isinstance(exc, psycopg.errors.UniqueViolation):
            return StoreConflict(f"the database {self._safe_url()} refused a duplicate: {exc}")
        if isinstance(exc, psycopg.Error):
            return StoreError(f"the database {self._safe_url()} failed: {exc}")
        return None

    def _json_in(self, value: Any) -> Any:
        return Jsonb(value)

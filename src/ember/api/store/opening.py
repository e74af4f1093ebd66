"""``open_store``: the backend a database URL names, opened and migrated.

Apart from ``base`` so that the interface does not import its own implementations.
"""

from __future__ import annotations

from ember.api.store.base import Store
from ember.errors import UsageError


async def open_store(url: str) -> Store:
    """Open and migrate the database at ``url`` (see the module docstring); raises UsageError
    for a URL of no known kind, StoreError when the database cannot be opened."""
    if url.startswith("sqlite://"):
        from ember.api.store.sqlite import SqliteStore

        sqlite_store = SqliteStore(url)
        await sqlite_store.open()
        return sqlite_store
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from ember.api.store.postgres import PostgresStore
        except ImportError as exc:  # psycopg without a libpq to load
            raise UsageError(
                f"PostgreSQL support cannot load ({exc}): install libpq (apt-get install libpq5)"
            ) from exc

        postgres_store = PostgresStore(url)
        await postgres_store.open()
        return postgres_store
    raise UsageError(
        f"database URL {url!r} is neither sqlite://<path> nor postgresql://...: "
        "e.g. -db sqlite:///var/lib/ember/api.sqlite3"
    )

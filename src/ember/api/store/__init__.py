"""The control plane's database: one async ``Store`` protocol, SQLite and PostgreSQL backends."""

from ember.api.store.base import DEFAULT_DB_URL, Store, StoreConflict, StoreError
from ember.api.store.opening import open_store

__all__ = ["DEFAULT_DB_URL", "Store", "StoreConflict", "StoreError", "open_store"]

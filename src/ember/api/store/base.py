"""The store interface: everything the control plane keeps, behind one async protocol.

Two backends implement it with the same schema and the same numbered migrations:
``sqlite.SqliteStore`` (embedded, the default) and ``postgres.PostgresStore`` (psycopg 3).
``open_store(url)`` picks one by URL:

* ``sqlite:///var/lib/ember/api.sqlite3`` (the path is what follows ``sqlite://``, so three
  slashes make it absolute), ``sqlite://relative.db``, ``sqlite://:memory:``;
* ``postgresql://user@host:5432/db`` (or ``postgres://``), any libpq connection URL.

Every method may raise ``StoreError`` (the database failed or is unreachable);
``StoreConflict`` is a uniqueness violation (an alias taken).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Protocol

from ember.api.records import (
    ApiKey,
    Build,
    BuildStatus,
    SandboxRecord,
    SnapshotRecord,
    Team,
    Template,
    TemplateKind,
    TemplateTag,
)
from ember.errors import EmberError, UsageError

DEFAULT_DB_URL = "sqlite:///var/lib/ember/api.sqlite3"


class StoreError(EmberError):
    """The database failed, refused, or cannot be reached."""


class StoreConflict(StoreError):
    """A write collided with a unique value (an alias another template holds)."""


class Store(Protocol):
    """What the control plane keeps. Open with ``open_store``; ``close`` when done."""

    url: str

    async def close(self) -> None: ...

    async def schema_version(self) -> int: ...

    # settings and teams
    async def token_seed(self) -> str: ...
    async def default_team(self) -> Team: ...
    async def get_team(self, team_id: str) -> Team | None: ...
    async def set_team_limits(self, team_id: str, max_concurrent: int, max_length_hours: int) -> None: ...

    # API keys
    async def add_api_key(self, key: ApiKey, key_hash: str) -> None: ...
    async def team_for_api_key(self, key_hash: str) -> Team | None: ...
    async def list_api_keys(self, team_id: str) -> list[ApiKey]: ...

    # templates and builds
    async def create_template(self, template: Template, build: Build | None) -> None: ...
    async def get_template(self, template_id: str) -> Template | None: ...
    async def find_template(self, id_or_alias: str) -> Template | None: ...
    async def list_templates(self, team_id: str, kind: TemplateKind | None = None) -> list[Template]: ...
    async def delete_template(self, template_id: str) -> bool: ...
    async def set_alias(self, alias: str, template_id: str) -> None: ...
    async def add_build(self, build: Build, make_current: bool) -> None: ...
    async def get_build(self, build_id: str) -> Build | None: ...
    async def list_builds(self, template_id: str) -> list[Build]: ...
    async def record_spawn(self, template_id: str, at: dt.datetime) -> None: ...

    # template builds through the API (migration 2)
    async def update_build(self, build: Build) -> None: ...
    async def start_build(self, build_id: str, node: str, from_build_id: str | None) -> bool: ...
    async def finish_build(
        self,
        build_id: str,
        at: dt.datetime,
        *,
        envd_version: str,
        kernel_version: str,
        firecracker_version: str,
        disk_mb: int | None,
    ) -> Build | None: ...
    async def fail_build(self, build_id: str, at: dt.datetime, reason: str, step: str | None) -> bool: ...
    async def builds_with_status(self, statuses: Sequence[BuildStatus]) -> list[Build]: ...
    async def assign_tags(
        self, template_id: str, build_id: str, tags: Sequence[str], at: dt.datetime
    ) -> None: ...
    async def remove_tags(self, template_id: str, tags: Sequence[str]) -> list[str]: ...
    async def list_tags(self, template_id: str) -> list[TemplateTag]: ...
    async def tagged_build(self, template_id: str, tag: str) -> str | None: ...
    async def build_roots(self) -> set[str]: ...

    # running sandboxes
    async def put_sandbox(self, record: SandboxRecord) -> None: ...
    async def delete_sandbox(self, sandbox_id: str) -> None: ...
    async def list_sandboxes(self) -> list[SandboxRecord]: ...

    # paused sandboxes
    async def put_snapshot(self, record: SnapshotRecord) -> None: ...
    async def get_snapshot(self, sandbox_id: str) -> SnapshotRecord | None: ...
    async def delete_snapshot(self, sandbox_id: str) -> bool: ...
    async def list_snapshots(self, team_id: str, exclude: Sequence[str] = ()) -> list[SnapshotRecord]: ...


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

"""Every query of the ``Store``, once, in SQL that SQLite and PostgreSQL both run.

A backend subclass supplies the connection, the transaction, the placeholder style and
how four kinds of value cross the driver (instants, JSON, booleans, bytes). All database
work runs on one dedicated thread per store, so calls are serialized: SQLite gets its one
writer, PostgreSQL one connection, and the event loop never blocks on the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

from ember.api.records import (
    DEFAULT_MAX_CONCURRENT_SANDBOXES,
    DEFAULT_MAX_LENGTH_HOURS,
    ApiKey,
    Build,
    BuildStatus,
    SandboxRecord,
    SandboxSpec,
    SnapshotRecord,
    Team,
    Template,
    TemplateKind,
    TemplateTag,
)
from ember.api.store.base import StoreError
from ember.api.store.migrations import MIGRATIONS
from ember.api.tokens import new_seed

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

Row = Sequence[Any]

_SPEC = (
    "team_id",
    "template_id",
    "base_template_id",
    "build_id",
    "alias",
    "metadata",
    "vcpu",
    "ram_mb",
    "disk_mb",
    "envd_version",
    "kernel_version",
    "firecracker_version",
    "secure",
    "allow_internet_access",
    "network",
    "auto_pause",
    "auto_pause_filesystem_only",
    "auto_resume",
    "auto_resume_timeout_s",
    "max_length_hours",
)
_SANDBOX = (
    "sandbox_id",
    *_SPEC,
    "node",
    "client_id",
    "execution_id",
    "started_at",
    "end_at",
    "scheduling_metadata",
)
_SNAPSHOT = (
    "sandbox_id",
    *_SPEC,
    "origin_node",
    "started_at",
    "paused_at",
    "filesystem_only",
    "scheduling_metadata",
)
_TEAM = "id, name, max_concurrent_sandboxes, max_length_hours, blocked"
_TEMPLATE = (
    "id, team_id, kind, public, build_id, source_sandbox_id, spawn_count, last_spawned_at, "
    "created_at, updated_at"
)
_BUILD = (
    "build_id, template_id, status, vcpu, ram_mb, disk_mb, envd_version, kernel_version, "
    "firecracker_version, created_at, finished_at, node, from_build_id, tags, reason, reason_step"
)
_BUILD_COLUMNS = tuple(column.strip() for column in _BUILD.split(","))
_UPDATE_BUILD = (
    "UPDATE template_builds SET "
    + ", ".join(f"{column} = ?" for column in _BUILD_COLUMNS[2:])
    + " WHERE build_id = ?"
)
_UNFINISHED = (str(BuildStatus.WAITING), str(BuildStatus.BUILDING))
DEFAULT_TAG = "default"
_DEFAULT_TEAM_NAME = "default"


def _upsert(table: str, columns: Sequence[str]) -> str:
    updates = ", ".join(f"{column} = excluded.{column}" for column in columns[1:])
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
        f"ON CONFLICT ({columns[0]}) DO UPDATE SET {updates}"
    )


_PUT_SANDBOX = _upsert("sandboxes", _SANDBOX)
_PUT_SNAPSHOT = _upsert("snapshots", _SNAPSHOT)


class SqlStore:
    """The queries; subclasses implement the hooks below (see the module docstring)."""

    types: ClassVar[dict[str, str]]
    """The DDL type words of ``migrations`` for this database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ember-store")
        self._closed = False

    # -- backend hooks --------------------------------------------------------------------------

    def _connect(self) -> None:
        raise NotImplementedError

    def _disconnect(self) -> None:
        raise NotImplementedError

    def _execute(self, query: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement (``?`` placeholders) and return its rows; driver errors escape."""
        raise NotImplementedError

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def _migration_lock(self) -> contextlib.AbstractContextManager[None]:
        """Held while migrating, so two processes starting together migrate once."""
        return contextlib.nullcontext()

    def _driver_error(self, exc: Exception) -> StoreError | None:
        """The StoreError for a driver exception, or None when it is not the driver's."""
        raise NotImplementedError

    def _ts_in(self, value: dt.datetime | None) -> Any:
        return value

    def _ts_out(self, value: Any) -> dt.datetime | None:
        if value is None:
            return None
        moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
        return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)

    def _json_in(self, value: Any) -> Any:
        return json.dumps(value, separators=(",", ":"), sort_keys=True)

    def _json_out(self, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str | bytes) else value

    # -- plumbing -----------------------------------------------------------------------------

    async def _run(self, call: Callable[..., _T], *args: Any) -> _T:
        if self._closed:
            raise StoreError(f"the store {self._safe_url()} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._guarded, call, *args))

    def _guarded(self, call: Callable[..., _T], *args: Any) -> _T:
        try:
            return call(*args)
        except StoreError:
            raise
        except Exception as exc:
            mapped = self._driver_error(exc)
            if mapped is None:
                raise
            raise mapped from exc

    def _safe_url(self) -> str:
        """The URL without a password, for messages."""
        scheme, sep, rest = self.url.partition("://")
        if "@" in rest:
            rest = rest.rpartition("@")[2]
        return f"{scheme}{sep}{rest}"

    async def open(self) -> None:
        """Connect and migrate; on failure nothing stays open."""
        try:
            await self._run(self._open)
        except BaseException:
            await self.close()
            raise

    def _open(self) -> None:
        self._connect()
        self._migrate()

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self._run(self._disconnect)
        finally:
            self._closed = True
            self._executor.shutdown(wait=True)

    def _migrate(self) -> None:
        with self._migration_lock():
            self._execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                f"(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at {self.types['ts']} NOT NULL)"
            )
            applied = {int(row[0]) for row in self._execute("SELECT version FROM schema_migrations")}
            known = {migration.version for migration in MIGRATIONS}
            if applied - known:
                raise StoreError(
                    f"the database {self._safe_url()} has schema version {max(applied)}, newer than this "
                    f"ember knows ({max(known)}): upgrade ember, or point -db at another database"
                )
            for migration in MIGRATIONS:
                if migration.version in applied:
                    continue
                with self._transaction():
                    for statement in migration.render(self.types):
                        self._execute(statement)
                    self._execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                        (migration.version, migration.name, self._ts_in(_now())),
                    )
                _log.info(
                    "database %s: applied migration %d (%s)",
                    self._safe_url(),
                    migration.version,
                    migration.name,
                )
            with self._transaction():
                self._ensure_default_team()

    def _ensure_default_team(self) -> None:
        if self._execute("SELECT id FROM teams WHERE is_default = ?", (True,)):
            return
        self._execute(
            "INSERT INTO teams (id, name, is_default, max_concurrent_sandboxes, max_length_hours, blocked, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                str(uuid.uuid4()),
                _DEFAULT_TEAM_NAME,
                True,
                DEFAULT_MAX_CONCURRENT_SANDBOXES,
                DEFAULT_MAX_LENGTH_HOURS,
                False,
                self._ts_in(_now()),
            ),
        )

    async def schema_version(self) -> int:
        return await self._run(self._schema_version)

    def _schema_version(self) -> int:
        rows = self._execute("SELECT MAX(version) FROM schema_migrations")
        return int(rows[0][0] or 0)

    # -- settings and teams -----------------------------------------------------------------------

    async def token_seed(self) -> str:
        return await self._run(self._token_seed)

    def _token_seed(self) -> str:
        self._execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            ("token_seed", new_seed()),
        )
        return str(self._execute("SELECT value FROM settings WHERE key = ?", ("token_seed",))[0][0])

    async def default_team(self) -> Team:
        rows = await self._run(self._execute, f"SELECT {_TEAM} FROM teams WHERE is_default = ?", (True,))
        if not rows:
            raise StoreError(f"the database {self._safe_url()} has no default team")
        return self._team(rows[0])

    async def get_team(self, team_id: str) -> Team | None:
        rows = await self._run(self._execute, f"SELECT {_TEAM} FROM teams WHERE id = ?", (team_id,))
        return self._team(rows[0]) if rows else None

    async def set_team_limits(self, team_id: str, max_concurrent: int, max_length_hours: int) -> None:
        await self._run(
            self._execute,
            "UPDATE teams SET max_concurrent_sandboxes = ?, max_length_hours = ? WHERE id = ?",
            (max_concurrent, max_length_hours, team_id),
        )

    def _team(self, row: Row) -> Team:
        return Team(
            id=row[0],
            name=row[1],
            max_concurrent_sandboxes=int(row[2]),
            max_length_hours=int(row[3]),
            blocked=bool(row[4]),
        )

    # -- API keys -------------------------------------------------------------------------------

    async def add_api_key(self, key: ApiKey, key_hash: str) -> None:
        await self._run(
            self._execute,
            "INSERT INTO api_keys (id, team_id, key_hash, key_mask, name, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (key.id, key.team_id, key_hash, key.mask, key.name, self._ts_in(key.created_at)),
        )

    async def team_for_api_key(self, key_hash: str) -> Team | None:
        query = (
            f"SELECT {', '.join('t.' + c.strip() for c in _TEAM.split(','))} FROM api_keys k "
            "JOIN teams t ON t.id = k.team_id WHERE k.key_hash = ?"
        )
        rows = await self._run(self._execute, query, (key_hash,))
        return self._team(rows[0]) if rows else None

    async def list_api_keys(self, team_id: str) -> list[ApiKey]:
        rows = await self._run(
            self._execute,
            "SELECT id, team_id, name, key_mask, created_at FROM api_keys "
            "WHERE team_id = ? ORDER BY created_at",
            (team_id,),
        )
        return [ApiKey(row[0], row[1], row[2], row[3], self._required_ts(row[4])) for row in rows]

    # -- templates and builds -------------------------------------------------------------------

    async def create_template(self, template: Template, build: Build | None) -> None:
        await self._run(self._create_template, template, build)

    def _create_template(self, template: Template, build: Build | None) -> None:
        with self._transaction():
            self._execute(
                f"INSERT INTO templates ({_TEMPLATE}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    template.id,
                    template.team_id,
                    str(template.kind),
                    template.public,
                    template.build_id,
                    template.source_sandbox_id,
                    template.spawn_count,
                    self._ts_in(template.last_spawned_at),
                    self._ts_in(template.created_at),
                    self._ts_in(template.updated_at),
                ),
            )
            for alias in template.aliases:
                self._execute(
                    "INSERT INTO template_aliases (alias, template_id) VALUES (?, ?)", (alias, template.id)
                )
            if build is not None:
                self._insert_build(build)

    async def get_template(self, template_id: str) -> Template | None:
        return await self._run(self._get_template, template_id)

    def _get_template(self, template_id: str) -> Template | None:
        rows = self._execute(f"SELECT {_TEMPLATE} FROM templates WHERE id = ?", (template_id,))
        return self._template(rows[0]) if rows else None

    async def find_template(self, id_or_alias: str) -> Template | None:
        return await self._run(self._find_template, id_or_alias)

    def _find_template(self, id_or_alias: str) -> Template | None:
        found = self._get_template(id_or_alias)
        if found is not None:
            return found
        rows = self._execute("SELECT template_id FROM template_aliases WHERE alias = ?", (id_or_alias,))
        return self._get_template(rows[0][0]) if rows else None

    async def list_templates(self, team_id: str, kind: TemplateKind | None = None) -> list[Template]:
        return await self._run(self._list_templates, team_id, kind)

    def _list_templates(self, team_id: str, kind: TemplateKind | None) -> list[Template]:
        query = f"SELECT {_TEMPLATE} FROM templates WHERE team_id = ?"
        params: list[Any] = [team_id]
        if kind is not None:
            query += " AND kind = ?"
            params.append(str(kind))
        rows = self._execute(query + " ORDER BY created_at, id", params)
        aliases: dict[str, list[str]] = {}
        alias_rows = self._execute(
            "SELECT a.alias, a.template_id FROM template_aliases a JOIN templates t ON t.id = a.template_id "
            "WHERE t.team_id = ? ORDER BY a.alias",
            (team_id,),
        )
        for alias, template_id in alias_rows:
            aliases.setdefault(template_id, []).append(alias)
        return [self._template(row, aliases.get(row[0], [])) for row in rows]

    def _template(self, row: Row, aliases: Sequence[str] | None = None) -> Template:
        if aliases is None:
            aliases = [
                r[0]
                for r in self._execute(
                    "SELECT alias FROM template_aliases WHERE template_id = ? ORDER BY alias", (row[0],)
                )
            ]
        return Template(
            id=row[0],
            team_id=row[1],
            kind=TemplateKind(row[2]),
            public=bool(row[3]),
            build_id=row[4],
            source_sandbox_id=row[5],
            spawn_count=int(row[6]),
            last_spawned_at=self._ts_out(row[7]),
            created_at=self._required_ts(row[8]),
            updated_at=self._required_ts(row[9]),
            aliases=tuple(aliases),
        )

    async def delete_template(self, template_id: str) -> bool:
        return await self._run(self._delete_template, template_id)

    def _delete_template(self, template_id: str) -> bool:
        with self._transaction():
            if not self._execute("SELECT id FROM templates WHERE id = ?", (template_id,)):
                return False
            # Explicit, not only ON DELETE CASCADE: SQLite enforces it only with foreign_keys on.
            self._execute("DELETE FROM template_aliases WHERE template_id = ?", (template_id,))
            self._execute("DELETE FROM template_tags WHERE template_id = ?", (template_id,))
            self._execute("DELETE FROM template_builds WHERE template_id = ?", (template_id,))
            self._execute("DELETE FROM templates WHERE id = ?", (template_id,))
            return True

    async def set_alias(self, alias: str, template_id: str) -> None:
        await self._run(
            self._execute,
            "INSERT INTO template_aliases (alias, template_id) VALUES (?, ?) "
            "ON CONFLICT (alias) DO UPDATE SET template_id = excluded.template_id",
            (alias, template_id),
        )

    async def add_build(self, build: Build, make_current: bool) -> None:
        await self._run(self._add_build, build, make_current)

    def _add_build(self, build: Build, make_current: bool) -> None:
        with self._transaction():
            self._insert_build(build)
            if make_current:
                self._execute(
                    "UPDATE templates SET build_id = ?, updated_at = ? WHERE id = ?",
                    (build.build_id, self._ts_in(_now()), build.template_id),
                )

    def _insert_build(self, build: Build) -> None:
        self._execute(
            f"INSERT INTO template_builds ({_BUILD}) VALUES ({', '.join('?' for _ in _BUILD_COLUMNS)})",
            self._build_values(build),
        )

    def _build_values(self, build: Build) -> tuple[Any, ...]:
        return (
            build.build_id,
            build.template_id,
            str(build.status),
            build.vcpu,
            build.ram_mb,
            build.disk_mb,
            build.envd_version,
            build.kernel_version,
            build.firecracker_version,
            self._ts_in(build.created_at),
            self._ts_in(build.finished_at),
            build.node,
            build.from_build_id,
            self._json_in(list(build.tags)),
            build.reason,
            build.reason_step,
        )

    async def get_build(self, build_id: str) -> Build | None:
        return await self._run(self._get_build, build_id)

    async def list_builds(self, template_id: str) -> list[Build]:
        rows = await self._run(
            self._execute,
            f"SELECT {_BUILD} FROM template_builds WHERE template_id = ? ORDER BY created_at, build_id",
            (template_id,),
        )
        return [self._build(row) for row in rows]

    def _build(self, row: Row) -> Build:
        return Build(
            build_id=row[0],
            template_id=row[1],
            status=BuildStatus(row[2]),
            vcpu=int(row[3]),
            ram_mb=int(row[4]),
            disk_mb=int(row[5]),
            envd_version=row[6],
            kernel_version=row[7],
            firecracker_version=row[8],
            created_at=self._required_ts(row[9]),
            finished_at=self._ts_out(row[10]),
            node=row[11],
            from_build_id=row[12],
            tags=tuple(str(tag) for tag in self._json_out(row[13]) or ()),
            reason=row[14],
            reason_step=row[15],
        )

    def _get_build(self, build_id: str) -> Build | None:
        rows = self._execute(f"SELECT {_BUILD} FROM template_builds WHERE build_id = ?", (build_id,))
        return self._build(rows[0]) if rows else None

    # -- template builds through the API ----------------------------------------------------------

    async def update_build(self, build: Build) -> None:
        values = self._build_values(build)
        await self._run(self._execute, _UPDATE_BUILD, (*values[2:], build.build_id))

    async def start_build(self, build_id: str, node: str, from_build_id: str | None) -> bool:
        """waiting -> building on ``node``; False when the build is not waiting (started already)."""
        return await self._run(self._start_build, build_id, node, from_build_id)

    def _start_build(self, build_id: str, node: str, from_build_id: str | None) -> bool:
        with self._transaction():
            build = self._get_build(build_id)
            if build is None or build.status is not BuildStatus.WAITING:
                return False
            self._execute(
                "UPDATE template_builds SET status = ?, node = ?, from_build_id = ? WHERE build_id = ?",
                (str(BuildStatus.BUILDING), node, from_build_id, build_id),
            )
            return True

    async def finish_build(
        self,
        build_id: str,
        at: dt.datetime,
        *,
        envd_version: str,
        kernel_version: str,
        firecracker_version: str,
        disk_mb: int | None,
    ) -> Build | None:
        """building -> ready, its tags assigned (``default``: the current build, unless a newer
        build already is). Returns the ready build, or None when it was not building."""
        return await self._run(
            self._finish_build, build_id, at, envd_version, kernel_version, firecracker_version, disk_mb
        )

    def _finish_build(
        self,
        build_id: str,
        at: dt.datetime,
        envd_version: str,
        kernel_version: str,
        firecracker_version: str,
        disk_mb: int | None,
    ) -> Build | None:
        with self._transaction():
            build = self._get_build(build_id)
            if build is None or build.status is not BuildStatus.BUILDING:
                return None
            self._execute(
                "UPDATE template_builds SET status = ?, envd_version = ?, kernel_version = ?, "
                "firecracker_version = ?, disk_mb = ?, finished_at = ?, reason = NULL, reason_step = NULL "
                "WHERE build_id = ?",
                (
                    str(BuildStatus.READY),
                    envd_version or build.envd_version,
                    kernel_version or build.kernel_version,
                    firecracker_version or build.firecracker_version,
                    disk_mb if disk_mb else build.disk_mb,
                    self._ts_in(at),
                    build_id,
                ),
            )
            self._assign_tags(build.template_id, build_id, build.tags, at, newer_only=True)
            return self._get_build(build_id)

    async def fail_build(self, build_id: str, at: dt.datetime, reason: str, step: str | None) -> bool:
        """waiting/building -> error with its reason; False when it had finished already."""
        return await self._run(self._fail_build, build_id, at, reason, step)

    def _fail_build(self, build_id: str, at: dt.datetime, reason: str, step: str | None) -> bool:
        with self._transaction():
            build = self._get_build(build_id)
            if build is None or build.finished:
                return False
            self._execute(
                "UPDATE template_builds SET status = ?, reason = ?, reason_step = ?, finished_at = ? "
                "WHERE build_id = ?",
                (str(BuildStatus.ERROR), reason, step, self._ts_in(at), build_id),
            )
            return True

    async def builds_with_status(self, statuses: Sequence[BuildStatus]) -> list[Build]:
        if not statuses:
            return []
        rows = await self._run(
            self._execute,
            f"SELECT {_BUILD} FROM template_builds WHERE status IN ({', '.join('?' for _ in statuses)}) "
            "ORDER BY created_at, build_id",
            tuple(str(status) for status in statuses),
        )
        return [self._build(row) for row in rows]

    async def assign_tags(
        self, template_id: str, build_id: str, tags: Sequence[str], at: dt.datetime
    ) -> None:
        """Point each of ``tags`` at ``build_id`` (``default``: make it the current build)."""
        await self._run(self._assign_tags_now, template_id, build_id, tags, at)

    def _assign_tags_now(self, template_id: str, build_id: str, tags: Sequence[str], at: dt.datetime) -> None:
        with self._transaction():
            self._assign_tags(template_id, build_id, tags, at, newer_only=False)

    def _assign_tags(
        self, template_id: str, build_id: str, tags: Sequence[str], at: dt.datetime, newer_only: bool
    ) -> None:
        for tag in dict.fromkeys(tags):
            if tag == DEFAULT_TAG:
                if newer_only and not self._is_newer_than_current(template_id, build_id):
                    continue
                self._execute(
                    "UPDATE templates SET build_id = ?, updated_at = ? WHERE id = ?",
                    (build_id, self._ts_in(at), template_id),
                )
                continue
            self._execute(
                "INSERT INTO template_tags (template_id, tag, build_id, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (template_id, tag) DO UPDATE SET build_id = excluded.build_id, "
                "created_at = excluded.created_at",
                (template_id, tag, build_id, self._ts_in(at)),
            )

    def _is_newer_than_current(self, template_id: str, build_id: str) -> bool:
        """Whether ``build_id`` was requested after the template's current build (or there is none):
        builds finishing out of order never make an older one current again."""
        rows = self._execute(
            "SELECT b.created_at, b.build_id FROM templates t "
            "JOIN template_builds b ON b.build_id = t.build_id WHERE t.id = ?",
            (template_id,),
        )
        mine = self._get_build(build_id)
        if not rows or mine is None:
            return True
        current = (self._required_ts(rows[0][0]), str(rows[0][1]))
        return (mine.created_at, mine.build_id) >= current

    async def remove_tags(self, template_id: str, tags: Sequence[str]) -> list[str]:
        """Drop ``tags`` (never ``default``) from the template; returns those that were there."""
        return await self._run(self._remove_tags, template_id, tags)

    def _remove_tags(self, template_id: str, tags: Sequence[str]) -> list[str]:
        removed = []
        with self._transaction():
            for tag in dict.fromkeys(tags):
                if self._execute(
                    "SELECT tag FROM template_tags WHERE template_id = ? AND tag = ?", (template_id, tag)
                ):
                    self._execute(
                        "DELETE FROM template_tags WHERE template_id = ? AND tag = ?", (template_id, tag)
                    )
                    removed.append(tag)
        return removed

    async def list_tags(self, template_id: str) -> list[TemplateTag]:
        """The template's tags, ``default`` (its current build, if any) first."""
        return await self._run(self._list_tags, template_id)

    def _list_tags(self, template_id: str) -> list[TemplateTag]:
        found: list[TemplateTag] = []
        current = self._execute("SELECT build_id, updated_at FROM templates WHERE id = ?", (template_id,))
        if current and current[0][0]:
            found.append(TemplateTag(DEFAULT_TAG, str(current[0][0]), self._required_ts(current[0][1])))
        rows = self._execute(
            "SELECT tag, build_id, created_at FROM template_tags WHERE template_id = ? ORDER BY tag",
            (template_id,),
        )
        found += [TemplateTag(str(row[0]), str(row[1]), self._required_ts(row[2])) for row in rows]
        return found

    async def tagged_build(self, template_id: str, tag: str) -> str | None:
        """The build ``tag`` names in the template (``default``: the current build), or None."""
        if tag == DEFAULT_TAG:
            template = await self.get_template(template_id)
            return template.build_id if template is not None else None
        rows = await self._run(
            self._execute,
            "SELECT build_id FROM template_tags WHERE template_id = ? AND tag = ?",
            (template_id, tag),
        )
        return str(rows[0][0]) if rows else None

    async def build_roots(self) -> set[str]:
        """Every build still in use, for gc: each template's current build and tagged builds,
        every paused sandbox's build, every running sandbox's build, every build not finished
        yet and the build each of those starts from."""
        return await self._run(self._build_roots)

    def _build_roots(self) -> set[str]:
        placeholders = ", ".join("?" for _ in _UNFINISHED)
        queries: list[tuple[str, tuple[Any, ...]]] = [
            ("SELECT build_id FROM templates WHERE build_id IS NOT NULL", ()),
            ("SELECT build_id FROM template_tags", ()),
            ("SELECT build_id FROM snapshots", ()),
            ("SELECT build_id FROM sandboxes", ()),
            (f"SELECT build_id FROM template_builds WHERE status IN ({placeholders})", _UNFINISHED),
            (
                f"SELECT from_build_id FROM template_builds WHERE status IN ({placeholders}) "
                "AND from_build_id IS NOT NULL",
                _UNFINISHED,
            ),
        ]
        roots: set[str] = set()
        with self._transaction():  # one consistent view of every table
            for query, params in queries:
                roots.update(str(row[0]) for row in self._execute(query, params) if row[0])
        return roots

    async def record_spawn(self, template_id: str, at: dt.datetime) -> None:
        await self._run(
            self._execute,
            "UPDATE templates SET spawn_count = spawn_count + 1, last_spawned_at = ? WHERE id = ?",
            (self._ts_in(at), template_id),
        )

    # -- sandboxes and snapshots ----------------------------------------------------------------

    async def put_sandbox(self, record: SandboxRecord) -> None:
        values = (
            record.sandbox_id,
            *self._spec_values(record.spec),
            record.node,
            record.client_id,
            record.execution_id,
            self._ts_in(record.started_at),
            self._ts_in(record.end_at),
            record.scheduling_metadata,
        )
        await self._run(self._execute, _PUT_SANDBOX, values)

    async def delete_sandbox(self, sandbox_id: str) -> None:
        await self._run(self._execute, "DELETE FROM sandboxes WHERE sandbox_id = ?", (sandbox_id,))

    async def list_sandboxes(self) -> list[SandboxRecord]:
        rows = await self._run(
            self._execute, f"SELECT {', '.join(_SANDBOX)} FROM sandboxes ORDER BY started_at"
        )
        spec_end = 1 + len(_SPEC)
        return [
            SandboxRecord(
                sandbox_id=row[0],
                spec=self._spec(row[1:spec_end]),
                node=row[spec_end],
                client_id=row[spec_end + 1],
                execution_id=row[spec_end + 2],
                started_at=self._required_ts(row[spec_end + 3]),
                end_at=self._required_ts(row[spec_end + 4]),
                scheduling_metadata=bytes(row[spec_end + 5]),
            )
            for row in rows
        ]

    async def put_snapshot(self, record: SnapshotRecord) -> None:
        values = (
            record.sandbox_id,
            *self._spec_values(record.spec),
            record.origin_node,
            self._ts_in(record.started_at),
            self._ts_in(record.paused_at),
            record.filesystem_only,
            record.scheduling_metadata,
        )
        await self._run(self._execute, _PUT_SNAPSHOT, values)

    async def get_snapshot(self, sandbox_id: str) -> SnapshotRecord | None:
        rows = await self._run(
            self._execute, f"SELECT {', '.join(_SNAPSHOT)} FROM snapshots WHERE sandbox_id = ?", (sandbox_id,)
        )
        return self._snapshot(rows[0]) if rows else None

    async def delete_snapshot(self, sandbox_id: str) -> bool:
        return await self._run(self._delete_snapshot, sandbox_id)

    def _delete_snapshot(self, sandbox_id: str) -> bool:
        with self._transaction():
            found = bool(
                self._execute("SELECT sandbox_id FROM snapshots WHERE sandbox_id = ?", (sandbox_id,))
            )
            self._execute("DELETE FROM snapshots WHERE sandbox_id = ?", (sandbox_id,))
            return found

    async def list_snapshots(self, team_id: str, exclude: Sequence[str] = ()) -> list[SnapshotRecord]:
        rows = await self._run(
            self._execute,
            f"SELECT {', '.join(_SNAPSHOT)} FROM snapshots WHERE team_id = ? ORDER BY started_at, sandbox_id",
            (team_id,),
        )
        skipped = set(exclude)
        return [self._snapshot(row) for row in rows if row[0] not in skipped]

    def _snapshot(self, row: Row) -> SnapshotRecord:
        spec_end = 1 + len(_SPEC)
        return SnapshotRecord(
            sandbox_id=row[0],
            spec=self._spec(row[1:spec_end]),
            origin_node=row[spec_end],
            started_at=self._required_ts(row[spec_end + 1]),
            paused_at=self._required_ts(row[spec_end + 2]),
            filesystem_only=bool(row[spec_end + 3]),
            scheduling_metadata=bytes(row[spec_end + 4]),
        )

    def _spec_values(self, spec: SandboxSpec) -> tuple[Any, ...]:
        return (
            spec.team_id,
            spec.template_id,
            spec.base_template_id,
            spec.build_id,
            spec.alias,
            self._json_in(dict(spec.metadata)),
            spec.vcpu,
            spec.ram_mb,
            spec.disk_mb,
            spec.envd_version,
            spec.kernel_version,
            spec.firecracker_version,
            spec.secure,
            spec.allow_internet_access,
            self._json_in(_plain(spec.network)),
            spec.auto_pause,
            spec.auto_pause_filesystem_only,
            spec.auto_resume,
            spec.auto_resume_timeout_s,
            spec.max_length_hours,
        )

    def _spec(self, row: Row) -> SandboxSpec:
        values = dict(zip(_SPEC, row, strict=True))
        return SandboxSpec(
            team_id=values["team_id"],
            template_id=values["template_id"],
            base_template_id=values["base_template_id"],
            build_id=values["build_id"],
            alias=values["alias"],
            metadata={str(k): str(v) for k, v in (self._json_out(values["metadata"]) or {}).items()},
            vcpu=int(values["vcpu"]),
            ram_mb=int(values["ram_mb"]),
            disk_mb=int(values["disk_mb"]),
            envd_version=values["envd_version"],
            kernel_version=values["kernel_version"],
            firecracker_version=values["firecracker_version"],
            secure=bool(values["secure"]),
            allow_internet_access=None
            if values["allow_internet_access"] is None
            else bool(values["allow_internet_access"]),
            network=self._json_out(values["network"]) or {},
            auto_pause=bool(values["auto_pause"]),
            auto_pause_filesystem_only=bool(values["auto_pause_filesystem_only"]),
            auto_resume=bool(values["auto_resume"]),
            auto_resume_timeout_s=int(values["auto_resume_timeout_s"]),
            max_length_hours=int(values["max_length_hours"]),
        )

    def _required_ts(self, value: Any) -> dt.datetime:
        moment = self._ts_out(value)
        if moment is None:
            raise StoreError(f"the database {self._safe_url()} holds a NULL where a time is required")
        return moment


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _plain(value: Any) -> Any:
    """Mappings and sequences as plain dicts and lists, for the JSON encoder."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value

"""The control plane's store, one suite for both backends: SQLite in a temp dir, and a real
PostgreSQL server started by this module (Debian's ``postgresql``: initdb + pg_ctl into a temp
dir, on a free loopback port, as ``nobody`` when the tests run as root; torn down after).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import glob
import os
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from test_api_stub_orchestrator import free_port

from ember.api.records import (
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
from ember.api.store import Store, StoreConflict, StoreError, open_store
from ember.api.store.migrations import MIGRATIONS
from ember.errors import UsageError

_T = TypeVar("_T")
NOW = dt.datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=dt.UTC)


def _run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coroutine)


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class _Postgres:
    """A throwaway PostgreSQL cluster; ``database()`` makes a fresh, empty database."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="ember-pg-"))
        self.port = free_port()
        self.user = "ember"
        self._as: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            shutil.chown(self.root, "nobody")
            self._as = ["runuser", "-u", "nobody", "--"]
        data = self.root / "data"
        self._cmd("initdb", "-D", str(data), "-A", "trust", "-U", self.user, "-E", "UTF8", "--no-sync")
        options = f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._cmd("pg_ctl", "-D", str(data), "-o", options, "-l", str(self.root / "log"), "-w", "start")
        self._count = 0

    def _cmd(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self._as, str(self.bin / tool), *args], check=True, capture_output=True, cwd=self.root
        )

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        import psycopg

        self._count += 1
        name = f"t{self._count}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        subprocess.run(
            [
                *self._as,
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.root / "data"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            capture_output=True,
            cwd=self.root,
        )
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[_Postgres]:
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql (scripts/setup.sh does)")
    server = _Postgres(bin_dir)
    yield server
    server.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.emulator)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'api.sqlite3'}"
    server: _Postgres = request.getfixturevalue("postgres")
    return server.database()


def _with_store(db_url: str, test: Any) -> None:
    async def body() -> None:
        store = await open_store(db_url)
        try:
            await test(store)
        finally:
            await store.close()

    _run(body())


def _spec(team: Team, **changes: Any) -> SandboxSpec:
    values: dict[str, Any] = {
        "team_id": team.id,
        "template_id": "tpl00000000000000000",
        "base_template_id": "tpl00000000000000000",
        "build_id": str(uuid.uuid4()),
        "vcpu": 2,
        "ram_mb": 512,
        "disk_mb": 1024,
        "envd_version": "0.5.4",
        "max_length_hours": 24,
        "alias": "base",
        "metadata": {"k": "v w", "ü": "ß"},
        "allow_internet_access": False,
        "network": {"allowPublicTraffic": False, "allowOut": ["1.1.1.1"], "egressProxy": None},
        "auto_pause": True,
        "auto_resume": True,
        "auto_resume_timeout_s": 600,
    }
    values.update(changes)
    return SandboxSpec(**values)


def test_migrations_are_recorded_and_opening_again_changes_nothing(db_url: str) -> None:
    async def test(store: Store) -> None:
        assert await store.schema_version() == MIGRATIONS[-1].version
        seed = await store.token_seed()
        team = await store.default_team()
        again = await open_store(db_url)
        try:
            assert await again.token_seed() == seed
            assert await again.default_team() == team
        finally:
            await again.close()

    _with_store(db_url, test)


def test_the_default_team_has_the_originals_limits_and_takes_new_ones(db_url: str) -> None:
    async def test(store: Store) -> None:
        team = await store.default_team()
        assert (team.max_concurrent_sandboxes, team.max_length_hours, team.blocked) == (20, 24, False)
        await store.set_team_limits(team.id, 3, 1)
        assert await store.get_team(team.id) == Team(team.id, team.name, 3, 1)
        assert await store.get_team("nope") is None

    _with_store(db_url, test)


def test_api_keys_are_found_by_hash_only(db_url: str) -> None:
    async def test(store: Store) -> None:
        team = await store.default_team()
        key = ApiKey("k1", team.id, "ci", "e2b_...abcd", NOW)
        await store.add_api_key(key, "hash-1")
        assert await store.team_for_api_key("hash-1") == team
        assert await store.team_for_api_key("hash-2") is None
        assert await store.list_api_keys(team.id) == [key]
        with pytest.raises(StoreConflict):
            await store.add_api_key(ApiKey("k2", team.id, "dup", "e2b_...abcd", NOW), "hash-1")

    _with_store(db_url, test)


def test_templates_aliases_and_builds(db_url: str) -> None:
    async def test(store: Store) -> None:
        team = await store.default_team()
        build = Build("b1", "t1", BuildStatus.READY, 2, 512, 1024, "0.5.4", NOW, "6.1", "v1.10", NOW)
        template = Template("t1", team.id, TemplateKind.TEMPLATE, False, "b1", NOW, NOW, aliases=("base",))
        await store.create_template(template, build)
        assert await store.find_template("base") == template
        assert await store.find_template("t1") == template
        assert await store.get_build("b1") == build
        newer = Build("b2", "t1", BuildStatus.READY, 4, 1024, 2048, "0.6.0", NOW + dt.timedelta(seconds=1))
        await store.add_build(newer, make_current=True)
        found = await store.get_template("t1")
        assert found is not None and found.build_id == "b2"
        assert [b.build_id for b in await store.list_builds("t1")] == ["b1", "b2"]
        await store.record_spawn("t1", NOW)
        spawned = await store.get_template("t1")
        assert spawned is not None and (spawned.spawn_count, spawned.last_spawned_at) == (1, NOW)
        other = Template("t2", team.id, TemplateKind.SNAPSHOT, False, None, NOW, NOW, source_sandbox_id="i1")
        with pytest.raises(StoreConflict):
            await store.create_template(
                Template("t3", team.id, TemplateKind.TEMPLATE, False, None, NOW, NOW, ("base",)), None
            )
        assert await store.get_template("t3") is None  # the failed create left nothing
        await store.create_template(other, None)
        assert [t.id for t in await store.list_templates(team.id, TemplateKind.SNAPSHOT)] == ["t2"]
        assert [t.id for t in await store.list_templates(team.id)] == ["t1", "t2"]
        await store.set_alias("base", "t2")
        moved = await store.find_template("base")
        assert moved is not None and moved.id == "t2"
        assert await store.delete_template("t1") is True
        assert await store.delete_template("t1") is False
        assert await store.get_build("b1") is None

    _with_store(db_url, test)


def test_sandboxes_round_trip_and_update_in_place(db_url: str) -> None:
    async def test(store: Store) -> None:
        team = await store.default_team()
        record = SandboxRecord(
            "i1", _spec(team), "127.0.0.1:5008", "c1", "e1", NOW, NOW + dt.timedelta(hours=1), b"\x12\x00"
        )
        await store.put_sandbox(record)
        assert await store.list_sandboxes() == [record]
        later = SandboxRecord(
            "i1", record.spec, record.node, "c1", "e1", NOW, NOW + dt.timedelta(hours=2), b""
        )
        await store.put_sandbox(later)
        assert await store.list_sandboxes() == [later]
        await store.delete_sandbox("i1")
        assert await store.list_sandboxes() == []

    _with_store(db_url, test)


def test_snapshots_round_trip_with_their_spec(db_url: str) -> None:
    async def test(store: Store) -> None:
        team = await store.default_team()
        first = SnapshotRecord(
            "i1", _spec(team), "node-a", NOW, NOW + dt.timedelta(minutes=5), False, b"\x00\x01"
        )
        second = SnapshotRecord(
            "i2", _spec(team, allow_internet_access=None), "node-b", NOW + dt.timedelta(seconds=1), NOW, True
        )
        await store.put_snapshot(first)
        await store.put_snapshot(second)
        assert await store.get_snapshot("i1") == first
        assert await store.list_snapshots(team.id) == [first, second]
        assert await store.list_snapshots(team.id, exclude=["i1"]) == [second]
        assert await store.delete_snapshot("i1") is True
        assert await store.delete_snapshot("i1") is False
        assert await store.get_snapshot("i1") is None

    _with_store(db_url, test)


def test_a_database_from_a_newer_ember_is_refused(db_url: str) -> None:
    async def test(store: Store) -> None:
        pass

    _with_store(db_url, test)

    async def bump() -> None:
        store = await open_store(db_url)
        try:
            await store._run(  # type: ignore[attr-defined]
                store._execute,  # type: ignore[attr-defined]
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (999, "future", store._ts_in(NOW)),  # type: ignore[attr-defined]
            )
        finally:
            await store.close()

    _run(bump())
    with pytest.raises(StoreError, match="newer than this ember knows"):
        _with_store(db_url, test)


def test_a_new_sqlite_file_is_private_to_its_owner(tmp_path: Path) -> None:
    async def test(store: Store) -> None:
        await store.token_seed()

    _with_store(f"sqlite://{tmp_path / 'sub' / 'api.sqlite3'}", test)
    assert (tmp_path / "sub" / "api.sqlite3").stat().st_mode & 0o777 == 0o600


def test_a_sqlite_database_is_in_wal_mode_so_readers_never_wait_for_the_writer(tmp_path: Path) -> None:
    """WAL: the API's many readers (lists, the edge's lookups) go on while one request writes."""
    path = tmp_path / "api.sqlite3"

    async def test(store: Store) -> None:
        await store.token_seed()

    _with_store(f"sqlite://{path}", test)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unknown_database_urls_are_a_usage_error() -> None:
    with pytest.raises(UsageError):
        _run(open_store("mysql://nope"))


def test_an_unreachable_postgres_is_a_store_error() -> None:
    with pytest.raises(StoreError):
        _run(open_store(f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2"))


def test_a_version_1_database_is_migrated_to_version_2_keeping_its_rows(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ember.api.store.sql as sql

    async def old(store: Store) -> None:
        assert await store.schema_version() == 1
        team = await store.default_team()
        run: Any = store._run  # type: ignore[attr-defined]
        execute: Any = store._execute  # type: ignore[attr-defined]
        ts: Any = store._ts_in  # type: ignore[attr-defined]
        await run(
            execute,
            "INSERT INTO templates (id, team_id, kind, public, build_id, source_sandbox_id, spawn_count, "
            "last_spawned_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("t1", team.id, "template", False, "b1", None, 0, None, ts(NOW), ts(NOW)),
        )
        await run(
            execute,
            "INSERT INTO template_builds (build_id, template_id, status, vcpu, ram_mb, disk_mb, "
            "envd_version, kernel_version, firecracker_version, created_at, finished_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("b1", "t1", "ready", 2, 512, 1024, "0.5.4", "6.1", "v1.10", ts(NOW), ts(NOW)),
        )

    with monkeypatch.context() as patched:
        patched.setattr(sql, "MIGRATIONS", MIGRATIONS[:1])
        _with_store(db_url, old)

    async def new(store: Store) -> None:
        assert await store.schema_version() == len(MIGRATIONS) == 2
        build = await store.get_build("b1")
        assert build == Build("b1", "t1", BuildStatus.READY, 2, 512, 1024, "0.5.4", NOW, "6.1", "v1.10", NOW)
        assert build.tags == () and build.node is None
        assert await store.list_tags("t1") == [TemplateTag("default", "b1", NOW)]

    _with_store(db_url, new)


def test_template_builds_move_from_waiting_to_ready_and_take_their_tags(db_url: str) -> None:
    async def test(store: Store) -> None:
        team = await store.default_team()
        later = NOW + dt.timedelta(seconds=5)
        first = Build("b1", "t1", BuildStatus.WAITING, 2, 1024, 1024, "", NOW, tags=("default", "v1"))
        template = Template("t1", team.id, TemplateKind.TEMPLATE, False, None, NOW, NOW, aliases=("tpl",))
        await store.create_template(template, first)
        second = Build("b2", "t1", BuildStatus.WAITING, 2, 1024, 1024, "", later, tags=("default",))
        await store.add_build(second, make_current=False)
        assert await store.build_roots() == {"b1", "b2"}  # unfinished builds are in use

        assert await store.start_build("b1", "node-a", "base-build") is True
        assert await store.start_build("b1", "node-b", None) is False  # started once only
        assert await store.start_build("b2", "node-a", None) is True
        assert [b.build_id for b in await store.builds_with_status([BuildStatus.BUILDING])] == ["b1", "b2"]
        assert "base-build" in await store.build_roots()

        ready = await store.finish_build(
            "b2", later, envd_version="0.6.4", kernel_version="6.1", firecracker_version="v1.14", disk_mb=2048
        )
        assert ready is not None and (ready.status, ready.envd_version, ready.disk_mb) == (
            BuildStatus.READY,
            "0.6.4",
            2048,
        )
        current = await store.get_template("t1")
        assert current is not None and current.build_id == "b2"
        # the older build finishing later takes its other tags but not "default"
        older = await store.finish_build(
            "b1", later, envd_version="0.6.4", kernel_version="", firecracker_version="", disk_mb=None
        )
        assert older is not None and older.disk_mb == 1024 and older.node == "node-a"
        assert (
            await store.finish_build(
                "b1", later, envd_version="x", kernel_version="", firecracker_version="", disk_mb=None
            )
            is None
        )
        current = await store.get_template("t1")
        assert current is not None and current.build_id == "b2"
        assert await store.tagged_build("t1", "v1") == "b1"
        assert await store.tagged_build("t1", "default") == "b2"
        assert await store.tagged_build("t1", "nope") is None
        assert [(t.tag, t.build_id) for t in await store.list_tags("t1")] == [("default", "b2"), ("v1", "b1")]

        await store.assign_tags("t1", "b1", ["stable", "default"], later)
        assert [(t.tag, t.build_id) for t in await store.list_tags("t1")] == [
            ("default", "b1"),
            ("stable", "b1"),
            ("v1", "b1"),
        ]
        assert await store.remove_tags("t1", ["stable", "missing"]) == ["stable"]
        assert await store.build_roots() == {"b1"}

        third = Build("b3", "t1", BuildStatus.WAITING, 2, 1024, 1024, "", later)
        await store.add_build(third, make_current=False)
        assert await store.fail_build("b3", later, "step 2 failed", "2") is True
        assert await store.fail_build("b3", later, "again", None) is False
        failed = await store.get_build("b3")
        assert failed is not None and (failed.status, failed.reason, failed.reason_step) == (
            BuildStatus.ERROR,
            "step 2 failed",
            "2",
        )
        await store.update_build(dataclasses.replace(failed, node="node-c"))
        moved = await store.get_build("b3")
        assert moved is not None and moved.node == "node-c"

        paused = _spec(team)
        await store.put_snapshot(SnapshotRecord("i1", paused, "node-a", NOW, NOW))
        assert await store.build_roots() == {"b1", paused.build_id}
        assert await store.delete_template("t1") is True
        assert await store.list_tags("t1") == []
        assert await store.build_roots() == {paused.build_id}

    _with_store(db_url, test)

"""The schema, as numbered migrations both backends apply in order (table ``schema_migrations``).

A migration's text never changes once released: a change to the schema is a new migration.
The DDL is written once for both databases; four type words differ and are filled in per
backend: ``{ts}`` (a UTC instant: TEXT ISO-8601 in SQLite, TIMESTAMPTZ in PostgreSQL),
``{json}`` (TEXT / JSONB), ``{blob}`` (BLOB / BYTEA), ``{bool}`` (BOOLEAN in both).

Migration 1, the tables:

``settings``          key/value: ``token_seed`` (the HMAC seed of the sandbox tokens)
``teams``             one default team; its limits (concurrent sandboxes, max length in hours)
``api_keys``          SHA-256 of each key, a mask for listings, the team it acts for
``templates``         id, team, kind (template | snapshot), public, current build, spawn counters,
                      the source sandbox of a snapshot; ``template_aliases`` names them
``template_builds``   each build: status, vcpu/RAM/disk, envd/kernel/firecracker versions
``sandboxes``         running sandboxes, so a restarted API finds them: spec, node, times, the
                      SchedulingMetadata the node's Create answered
``snapshots``         paused sandboxes: spec (snapshot template + build), origin node, times,
                      pause mode, the node's SchedulingMetadata (serialized protobuf)

Migration 2, template builds through the API (``POST /v3/templates`` and the build steps):

``template_builds``   + ``node`` (the node building it), ``from_build_id`` (the build a
                      ``fromTemplate`` build starts from), ``tags`` (JSON list, assigned once
                      ready), ``reason`` / ``reason_step`` (why it failed, the SDK's step name)
``template_tags``     ``name:tag`` -> build, one row per template and tag; the ``default`` tag
                      is not stored here: it is ``templates.build_id``, the current build
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]

    def render(self, types: dict[str, str]) -> list[str]:
        return [statement.format(**types) for statement in self.statements]


_SPEC_COLUMNS = """
    team_id TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    template_id TEXT NOT NULL,
    base_template_id TEXT NOT NULL,
    build_id TEXT NOT NULL,
    alias TEXT,
    metadata {json} NOT NULL,
    vcpu INTEGER NOT NULL,
    ram_mb INTEGER NOT NULL,
    disk_mb INTEGER NOT NULL,
    envd_version TEXT NOT NULL,
    kernel_version TEXT NOT NULL,
    firecracker_version TEXT NOT NULL,
    secure {bool} NOT NULL,
    allow_internet_access {bool},
    network {json} NOT NULL,
    auto_pause {bool} NOT NULL,
    auto_pause_filesystem_only {bool} NOT NULL,
    auto_resume {bool} NOT NULL,
    auto_resume_timeout_s INTEGER NOT NULL,
    max_length_hours INTEGER NOT NULL,"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial",
        (
            "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            """CREATE TABLE teams (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                is_default {bool} NOT NULL,
                max_concurrent_sandboxes INTEGER NOT NULL,
                max_length_hours INTEGER NOT NULL,
                blocked {bool} NOT NULL,
                created_at {ts} NOT NULL
            )""",
            """CREATE TABLE api_keys (
                id TEXT PRIMARY KEY,
                team_id TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
                key_hash TEXT NOT NULL UNIQUE,
                key_mask TEXT NOT NULL,
                name TEXT NOT NULL,
                created_at {ts} NOT NULL
            )""",
            """CREATE TABLE templates (
                id TEXT PRIMARY KEY,
                team_id TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
                kind TEXT NOT NULL,
                public {bool} NOT NULL,
                build_id TEXT,
                source_sandbox_id TEXT,
                spawn_count INTEGER NOT NULL,
                last_spawned_at {ts},
                created_at {ts} NOT NULL,
                updated_at {ts} NOT NULL
            )""",
            "CREATE INDEX templates_by_team ON templates (team_id, kind, created_at)",
            """CREATE TABLE template_aliases (
                alias TEXT PRIMARY KEY,
                template_id TEXT NOT NULL REFERENCES templates (id) ON DELETE CASCADE
            )""",
            "CREATE INDEX template_aliases_by_template ON template_aliases (template_id)",
            """CREATE TABLE template_builds (
                build_id TEXT PRIMARY KEY,
                template_id TEXT NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
                status TEXT NOT NULL,
                vcpu INTEGER NOT NULL,
                ram_mb INTEGER NOT NULL,
                disk_mb INTEGER NOT NULL,
                envd_version TEXT NOT NULL,
                kernel_version TEXT NOT NULL,
                firecracker_version TEXT NOT NULL,
                created_at {ts} NOT NULL,
                finished_at {ts}
            )""",
            "CREATE INDEX template_builds_by_template ON template_builds (template_id, created_at)",
            f"""CREATE TABLE sandboxes (
                sandbox_id TEXT PRIMARY KEY,{_SPEC_COLUMNS}
                node TEXT NOT NULL,
                client_id TEXT NOT NULL,
                execution_id TEXT NOT NULL,
                started_at {{ts}} NOT NULL,
                end_at {{ts}} NOT NULL,
                scheduling_metadata {{blob}} NOT NULL
            )""",
            f"""CREATE TABLE snapshots (
                sandbox_id TEXT PRIMARY KEY,{_SPEC_COLUMNS}
                origin_node TEXT NOT NULL,
                started_at {{ts}} NOT NULL,
                paused_at {{ts}} NOT NULL,
                filesystem_only {{bool}} NOT NULL,
                scheduling_metadata {{blob}} NOT NULL
            )""",
            "CREATE INDEX snapshots_by_team ON snapshots (team_id, started_at)",
        ),
    ),
    Migration(
        2,
        "template builds",
        (
            "ALTER TABLE template_builds ADD COLUMN node TEXT",
            "ALTER TABLE template_builds ADD COLUMN from_build_id TEXT",
            "ALTER TABLE template_builds ADD COLUMN tags {json} NOT NULL DEFAULT '[]'",
            "ALTER TABLE template_builds ADD COLUMN reason TEXT",
            "ALTER TABLE template_builds ADD COLUMN reason_step TEXT",
            "CREATE INDEX template_builds_by_status ON template_builds (status)",
            """CREATE TABLE template_tags (
                template_id TEXT NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
                tag TEXT NOT NULL,
                build_id TEXT NOT NULL,
                created_at {ts} NOT NULL,
                PRIMARY KEY (template_id, tag)
            )""",
            "CREATE INDEX template_tags_by_build ON template_tags (build_id)",
        ),
    ),
)

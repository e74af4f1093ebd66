"""``ember copy-build``: copy a build and every object it references to another storage location."""

from __future__ import annotations

import argparse
import secrets
import string
import sys

from ember.build.copy import CopyEvent, copy_build
from ember.build.metadata import parse_metadata
from ember.cli.flags import FlagParser, build_id, non_negative
from ember.errors import BuildError, UsageError
from ember.storage import BuildPaths, Storage, open_storage

SUMMARY = "copy a build and every ancestor object it references between storage locations"

ENV_ID_ALPHABET = string.ascii_lowercase + string.digits
ENV_ID_LENGTH = 20


def build_parser() -> FlagParser:
    parser = FlagParser("ember copy-build", SUMMARY)
    parser.add_flag("build", help="build ID (UUID, required)", metavar="<uuid>", type=build_id, required=True)
    parser.add_flag(
        "from", help="source: local path, gs://bucket or s3://bucket", metavar="<path>", required=True
    )
    parser.add_flag(
        "to", help="destination: local path, gs://bucket or s3://bucket", metavar="<path>", required=True
    )
    parser.add_flag(
        "team",
        help="team UUID; when set, print SQL that registers the build on stdout",
        metavar="<uuid>",
        type=build_id,
    )
    parser.add_flag(
        "envd-version", help="envd version in the template (required with -team)", metavar="<version>"
    )
    parser.add_flag(
        "vcpu", help="vCPUs recorded in the SQL (default 2)", metavar="<n>", type=non_negative, default=2
    )
    parser.add_flag(
        "memory",
        help="memory in MB recorded in the SQL (default 1024)",
        metavar="<mb>",
        type=non_negative,
        default=1024,
    )
    parser.add_flag(
        "disk",
        help="disk in MB recorded in the SQL (default 1024)",
        metavar="<mb>",
        type=non_negative,
        default=1024,
    )
    parser.add_flag(
        "tag", help="build assignment tag (default 'default')", metavar="<name>", default="default"
    )
    return parser


def run(options: argparse.Namespace) -> int:
    if options.team and not options.envd_version:
        raise UsageError(
            "-envd-version is required with -team: pass the envd version baked into the template"
        )
    source = open_storage(getattr(options, "from"))
    destination = open_storage(options.to)
    print(
        f"Copying build '{options.build}' from '{getattr(options, 'from')}' to '{options.to}'",
        file=sys.stderr,
    )
    copy_build(options.build, source, destination, progress=_print_event)
    print(f"Build '{options.build}' copied to '{options.to}'", file=sys.stderr)
    if options.team:
        env_id = "".join(secrets.choice(ENV_ID_ALPHABET) for _ in range(ENV_ID_LENGTH))
        print(f"Generated env ID: {env_id}", file=sys.stderr)
        print(seed_sql(options, env_id, destination))
    return 0


def _print_event(event: CopyEvent) -> None:
    print(event.message, file=sys.stderr, flush=True)


def seed_sql(options: argparse.Namespace, env_id: str, destination: Storage) -> str:
    """The transaction that makes the copied build usable by the E2B API's database."""
    metadata = parse_metadata(destination.get(BuildPaths(options.build).metadata), options.build)
    kernel = metadata.template.kernel_version
    firecracker = metadata.template.firecracker_version
    if not kernel or not firecracker:
        raise BuildError(
            f"metadata.json of build {options.build} lacks kernel_version or firecracker_version, "
            "so the SQL cannot be generated; the build was copied"
        )
    values = [_quote(str(v)) for v in (options.build, env_id, kernel, firecracker, options.envd_version)]
    build, env, kernel_sql, firecracker_sql, envd = values
    return "\n".join(
        [
            "BEGIN;",
            "INSERT INTO public.envs (id, team_id, updated_at, public, source) VALUES "
            f"({env}, {_quote(str(options.team))}, NOW(), FALSE, 'template');",
            "INSERT INTO public.env_builds (id, env_id, updated_at, finished_at, status, ram_mb, vcpu, "
            "kernel_version, firecracker_version, envd_version, free_disk_size_mb, total_disk_size_mb) "
            "VALUES "
            f"({build}, {env}, NOW(), NOW(), 'uploaded', {options.memory}, {options.vcpu}, {kernel_sql}, "
            f"{firecracker_sql}, {envd}, {options.disk}, {options.disk});",
            "INSERT INTO public.env_build_assignments (env_id, build_id, tag) VALUES "
            f"({env}, {build}, {_quote(options.tag)});",
            "COMMIT;",
        ]
    )


def _quote(value: str) -> str:
    """A SQL string literal; metadata.json and flags are user input, so quotes are doubled."""
    return "'" + value.replace("'", "''") + "'"

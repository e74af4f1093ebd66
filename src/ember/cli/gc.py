"""``ember gc``: delete the builds nothing in use reads from any more (dry run by default)."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ember.build.gc import GcPlan, GcReport, KeepKind, KeptBuild, apply_gc, plan_gc
from ember.cli.flags import FlagParser, build_id, go_duration
from ember.errors import UsageError
from ember.storage import LocalStorage, Storage, open_storage

SUMMARY = "delete builds no root reads from, once older than a grace period (dry run by default)"

DESCRIPTION = f"""{SUMMARY}

usage: ember gc -storage <url> (-db <url> | -keep <build>... | -roots-file <path> | -all-unreferenced)
                [-grace 24h] [-dry-run=false] [-show-kept]

Roots are the builds in use: live templates' builds, paused sandboxes' snapshots, running
sandboxes' builds. -db takes them from the control plane's database (ember api -db): every
template's current and tagged builds, every paused and running sandbox's build, every
template build in progress and the build it starts from; it is read again before each batch
of deletions. Or name them with -keep (repeatable) and/or -roots-file (one build id per
line; blank lines and lines starting with # are skipped); given together, all are roots.
A build is kept while a root or a kept build's header reads from it (transitively, whatever
its age), while anything in its folder changed within -grace (an upload, copy or pause in
progress), or while a writer's .ember-claim on it is that young. Everything else is
deleted: complete builds nothing kept reads from, and folders without metadata.json left
unchanged for longer than -grace.
Ages come from the storage (file mtimes, GCS updated, S3 LastModified); a storage that keeps
no times (memory://) has every unrooted build kept unless -grace is 0.

Without any root gc refuses to run (exit 2): an empty root list would delete every
complete build. Pass -all-unreferenced to mean exactly that.

The default is a dry run: a table of what would go. -dry-run=false deletes, re-checking
each build right before it goes (a build written to since the plan is kept), metadata.json
first, and prints what went.

Exit status: 0 done (or dry run); 1 a storage error, or a build not fully deleted; 2 bad flags."""


class _GcFlags(FlagParser):
    def add_repeated_flag(self, name: str, *, help: str, metavar: str, type: Callable[[str], Any]) -> None:
        """A value flag that may be given many times; the values gather into a list."""
        spellings = (f"-{name}", f"--{name}")
        self._spellings.update(spellings)
        self._value_spellings.update(spellings)
        self.add_argument(
            *spellings,
            dest=name.replace("-", "_"),
            action="append",
            default=[],
            metavar=metavar,
            type=type,
            help=help,
        )


def build_parser() -> FlagParser:
    parser = _GcFlags("ember gc", DESCRIPTION)
    parser.add_flag(
        "storage",
        help="the build storage: a directory, gs://bucket or s3://bucket",
        metavar="<url>",
        required=True,
    )
    parser.add_repeated_flag(
        "keep",
        help="a build in use (repeatable); what it reads from is kept too",
        metavar="<build>",
        type=build_id,
    )
    parser.add_flag("roots-file", help="a file of builds in use, one id per line", metavar="<path>")
    parser.add_flag(
        "db",
        help="the control plane's database (sqlite://<path> or postgresql://...): its builds in use "
        "are the roots",
        metavar="<url>",
    )
    parser.add_flag(
        "grace",
        help="never delete a build whose folder changed this recently (default 24h)",
        metavar="<duration>",
        type=go_duration,
        default=24 * 3600.0,
    )
    parser.add_bool("dry-run", help="only show what would be deleted", default=True)
    parser.add_bool("all-unreferenced", help="allow a run without roots: delete every old complete build")
    parser.add_bool("show-kept", help="also list the kept builds and why each is kept")
    return parser


def read_roots_file(path: Path) -> list[uuid.UUID]:
    """The build ids in ``path``, one per line; ``UsageError`` names the first bad line."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read -roots-file {path}: {exc}") from exc
    roots = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        try:
            roots.append(uuid.UUID(entry))
        except ValueError:
            raise UsageError(
                f"line {number} of -roots-file {path}: {entry!r} is not a build id (a UUID)"
            ) from None
    return roots


def _open(url: str) -> Storage:
    storage = open_storage(url)
    if isinstance(storage, LocalStorage) and not storage.root.is_dir():
        raise UsageError(
            f"-storage {url}: {storage.root} is not a directory (a plain directory gets templates/ "
            "appended); check the path"
        )
    return storage


def format_bytes(count: int | None) -> str:
    if count is None:
        return "?"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{max(seconds, 0):.0f}s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _console() -> Console:
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def _table(title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("build", no_wrap=True)
    table.add_column("objects", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("age", justify="right")
    table.add_column("reason")
    return table


def _kept_table(url: str, kept: Iterable[KeptBuild]) -> Table:
    table = _table(f"kept in {url}")
    for build in kept:
        table.add_row(
            str(build.build_id),
            str(build.objects),
            format_bytes(build.size_bytes),
            format_age(build.age_s),
            build.reason,
        )
    return table


def _warn(message: str) -> None:
    print(f"ember gc: warning: {message}", file=sys.stderr)


def _warnings(plan: GcPlan) -> None:
    for root in plan.missing_roots:
        _warn(f"root {root} is not in {plan.storage_url}")
    for build, missing in plan.missing_references:
        _warn(
            f"kept build {build} reads from {missing}, which is not in {plan.storage_url}: {build} is broken"
        )
    if plan.ignored_keys and not plan.folders:
        _warn(
            f"{len(plan.ignored_keys)} objects in {plan.storage_url} lie outside any build folder and were "
            "ignored: is -storage the build storage?"
        )
    if not plan.times_known and plan.grace_s > 0:
        _warn(f"{plan.storage_url} reports no modification times: every build gc cannot prove old is kept")


def _kept_summary(plan: GcPlan) -> str:
    parts = [
        f"{plan.kept_count(KeepKind.ROOT)} roots",
        f"{plan.kept_count(KeepKind.REFERENCED)} referenced",
        f"{plan.kept_count(KeepKind.YOUNG)} younger than the grace",
        f"{plan.kept_count(KeepKind.CLAIMED)} claimed",
    ]
    unknown = plan.kept_count(KeepKind.AGE_UNKNOWN)
    if unknown:
        parts.append(f"{unknown} of unknown age")
    return f"keeping {len(plan.kept)} builds ({', '.join(parts)})"


def _print_plan(console: Console, plan: GcPlan) -> None:
    table = _table(f"would delete from {plan.storage_url} (dry run)")
    for build in plan.deletable:
        table.add_row(
            str(build.build_id),
            str(build.objects),
            format_bytes(build.size_bytes),
            format_age(build.age_s),
            build.reason,
        )
    if plan.deletable:
        console.print(table)
    print(
        f"dry run: would delete {len(plan.deletable)} builds, {plan.deletable_objects} objects, "
        f"{format_bytes(plan.deletable_bytes)}; {_kept_summary(plan)}; run with -dry-run=false to delete"
    )


def _print_report(console: Console, plan: GcPlan, report: GcReport) -> None:
    table = _table(f"deleted from {report.storage_url}")
    for build in report.deleted:
        table.add_row(
            str(build.build_id),
            str(build.objects),
            format_bytes(build.size_bytes),
            format_age(build.age_s),
            build.reason,
        )
    if report.deleted:
        console.print(table)
    for skipped in report.skipped:
        print(skipped.message)
    for failed in report.failed:
        print(f"ember gc: {failed.message}", file=sys.stderr)
    if report.stopped is not None:
        print(f"ember gc: {report.stopped}", file=sys.stderr)
    print(
        f"deleted {len(report.deleted)} builds, {report.objects_deleted} objects, "
        f"{format_bytes(report.bytes_deleted)} in {report.duration_s:.1f}s; {len(report.skipped)} skipped "
        f"(changed since the plan), {len(report.failed)} failed; {_kept_summary(plan)}"
    )


def _database_roots(url: str) -> list[uuid.UUID]:
    """The builds the API database at ``url`` has in use (``ember.api.gc.database_roots``)."""
    import asyncio

    from ember.api.gc import database_roots

    if url.startswith("sqlite://") and url != "sqlite://:memory:":
        path = Path(url.removeprefix("sqlite://"))
        if not path.is_file():  # opening would create an empty database, naming no build
            raise UsageError(f"-db {url}: there is no database at {path}; check the path")
    return asyncio.run(database_roots(url))


def run(options: argparse.Namespace) -> int:
    given: list[uuid.UUID] = list(options.keep)
    if options.roots_file:
        given += read_roots_file(Path(options.roots_file))
    roots = given + (_database_roots(options.db) if options.db else [])
    if not roots and not options.all_unreferenced and options.db:
        raise UsageError(
            f"the database {options.db} names no build in use: every complete build would be deleted; "
            "check -db, or pass -all-unreferenced if that is what you want"
        )
    if not roots and not options.all_unreferenced:
        raise UsageError(
            "no roots given: every complete build would be deleted; name the builds in use with -keep or "
            "-roots-file, or pass -all-unreferenced if that is what you want"
        )
    storage = _open(options.storage)
    plan = plan_gc(storage, roots, grace_s=options.grace)
    _warnings(plan)
    console = _console()
    if options.show_kept and plan.kept:
        console.print(_kept_table(plan.storage_url, plan.kept))
    if options.dry_run:
        _print_plan(console, plan)
        return 0
    current_roots = (lambda: [*given, *_database_roots(options.db)]) if options.db else None
    report = apply_gc(storage, plan, current_roots=current_roots, allow_no_roots=options.all_unreferenced)
    _print_report(console, plan, report)
    return 0 if report.ok else 1

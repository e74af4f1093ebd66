"""``ember gc`` as a user runs it: flags, the dry-run table, deleting, one-line errors and exit codes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from ember.build import plan_gc
from ember.build.gc.synthetic import write_synthetic_build, write_synthetic_chain
from ember.cli import main
from ember.storage import LocalStorage

UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TWO_DAYS_AGO = time.time() - 2 * 86400


@dataclass(frozen=True)
class Layout:
    directory: Path
    storage: LocalStorage
    template: uuid.UUID
    snapshot: uuid.UUID
    doomed: frozenset[uuid.UUID]
    young: uuid.UUID

    def builds(self) -> set[uuid.UUID]:
        return {uuid.UUID(key.split("/", 1)[0]) for key in self.storage.list("")}


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    """<dir>/templates: a template (2 layers) with a snapshot, a deleted template over its base,
    an abandoned incomplete build, all two days old; and one unreferenced build from just now."""
    storage = LocalStorage(tmp_path / "templates")
    template = write_synthetic_chain(storage, [uuid.uuid4(), uuid.uuid4()], seed=1)
    snapshot = write_synthetic_build(storage, uuid.uuid4(), template[-1], seed=3)
    deleted = write_synthetic_chain(storage, [uuid.uuid4()], template[0], seed=4)
    abandoned = write_synthetic_build(storage, uuid.uuid4(), complete=False)
    for current, dirs, files in os.walk(storage.root):
        for name in [*files, *dirs]:
            os.utime(Path(current) / name, (TWO_DAYS_AGO, TWO_DAYS_AGO))
    young = write_synthetic_build(storage, uuid.uuid4())
    return Layout(
        tmp_path,
        storage,
        template[-1].build_id,
        snapshot.build_id,
        frozenset({deleted[0].build_id, abandoned.build_id}),
        young.build_id,
    )


def run_gc(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["gc", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table_ids(output: str, title: str) -> set[uuid.UUID]:
    """Build ids in the first column of the table whose title starts with ``title``."""
    lines = output.splitlines()
    start = next(number for number, line in enumerate(lines) if line.startswith(title))
    found: set[uuid.UUID] = set()
    for line in lines[start + 1 :]:
        if not line.startswith(("┏", "┃", "┡", "│", "└")):
            break
        if line.startswith("│"):
            found.update(uuid.UUID(match) for match in UUID_PATTERN.findall(line.split("│")[1]))
    return found


def test_the_default_is_a_dry_run_whose_table_is_the_plan(
    capsys: pytest.CaptureFixture[str], layout: Layout
) -> None:
    before = layout.builds()
    code, out, err = run_gc(
        capsys,
        "-storage",
        str(layout.directory.parent / layout.directory.name),
        "-keep",
        str(layout.snapshot),
    )
    assert (code, err) == (0, "")
    plan = plan_gc(layout.storage, [layout.snapshot], grace_s=86400)
    assert {build.build_id for build in plan.deletable} == layout.doomed
    assert table_ids(out, "would delete from") == layout.doomed
    assert "abandoned: no metadata.json" in out and "unreferenced" in out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith(f"dry run: would delete 2 builds, {plan.deletable_objects} objects, ")
    assert "keeping 4 builds (1 roots, 2 referenced, 1 younger than the grace, 0 claimed)" in summary
    assert summary.endswith("run with -dry-run=false to delete")
    assert layout.builds() == before


def test_dry_run_false_deletes_and_prints_what_went(
    capsys: pytest.CaptureFixture[str], layout: Layout
) -> None:
    code, out, err = run_gc(
        capsys, "-storage", str(layout.directory), "-keep", str(layout.snapshot), "-dry-run=false"
    )
    assert (code, err) == (0, "")
    assert table_ids(out, "deleted from") == layout.doomed
    assert out.strip().splitlines()[-1].startswith("deleted 2 builds, ")
    assert not layout.builds() & layout.doomed
    assert {layout.snapshot, layout.template, layout.young} <= layout.builds()


def test_a_shorter_grace_lets_young_builds_go(capsys: pytest.CaptureFixture[str], layout: Layout) -> None:
    code, out, _ = run_gc(
        capsys, "-storage", str(layout.directory), "-keep", str(layout.snapshot), "-grace", "0s"
    )
    assert code == 0
    assert table_ids(out, "would delete from") == {*layout.doomed, layout.young}


def test_roots_come_from_a_file_and_show_kept_says_why(
    capsys: pytest.CaptureFixture[str], layout: Layout, tmp_path: Path
) -> None:
    roots = tmp_path / "roots.txt"
    roots.write_text(f"# live builds\n\n  {layout.snapshot}  \n{layout.template}\n")
    code, out, _ = run_gc(capsys, "-storage", str(layout.directory), "-roots-file", str(roots), "-show-kept")
    assert code == 0
    assert f"referenced by {layout.template}" in out or f"referenced by {layout.snapshot}" in out
    assert table_ids(out, "kept in") == layout.builds() - layout.doomed
    assert "keeping 4 builds (2 roots, 1 referenced" in out


def test_keep_is_repeatable(capsys: pytest.CaptureFixture[str], layout: Layout) -> None:
    code, out, _ = run_gc(
        capsys, "-storage", str(layout.directory), "-keep", str(layout.snapshot), "--keep", str(layout.young)
    )
    assert code == 0 and "(2 roots," in out


def test_without_roots_gc_refuses_unless_told(capsys: pytest.CaptureFixture[str], layout: Layout) -> None:
    code, out, err = run_gc(capsys, "-storage", str(layout.directory))
    assert code == 2 and out == ""
    assert err == (
        "ember gc: no roots given: every complete build would be deleted; name the builds in use with -keep "
        "or -roots-file, or pass -all-unreferenced if that is what you want\n"
    )
    code, out, _ = run_gc(capsys, "-storage", str(layout.directory), "-all-unreferenced")
    assert code == 0
    assert table_ids(out, "would delete from") == layout.builds() - {layout.young}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-storage", "ftp://bucket", "-keep", "{root}"], "unsupported storage location 'ftp://bucket'"),
        (["-storage", "gs://", "-keep", "{root}"], "missing bucket name"),
        (["-storage", "{missing}", "-keep", "{root}"], "is not a directory"),
        (["-storage", "{dir}", "-keep", "{root}", "-grace", "soon"], "invalid duration 'soon'"),
        (["-storage", "{dir}", "-keep", "not-a-uuid"], "'not-a-uuid' is not a build id"),
        (["-storage", "{dir}", "-roots-file", "{missing}"], "cannot read -roots-file"),
        (["-storage", "{dir}", "-roots-file", "{bad_roots}"], "line 2 of -roots-file"),
        (["-keep", "{root}"], "the following arguments are required: -storage"),
        (["-storage", "{dir}", "-keep", "{root}", "-dry-run=maybe"], "invalid boolean value 'maybe'"),
    ],
)
def test_bad_flags_are_one_line_errors_with_exit_2(
    capsys: pytest.CaptureFixture[str], layout: Layout, tmp_path: Path, args: list[str], message: str
) -> None:
    bad_roots = tmp_path / "bad-roots.txt"
    bad_roots.write_text(f"{layout.snapshot}\nsnapshot-2\n")
    values = {
        "root": str(layout.snapshot),
        "dir": str(layout.directory),
        "missing": str(tmp_path / "nowhere"),
        "bad_roots": str(bad_roots),
    }
    code, out, err = run_gc(capsys, *(arg.format(**values) for arg in args))
    assert code == 2 and out == ""
    assert err.startswith("ember gc: ") and err.count("\n") == 1
    assert message in err
    assert layout.builds() >= layout.doomed


def test_a_root_missing_from_the_storage_is_a_warning(
    capsys: pytest.CaptureFixture[str], layout: Layout
) -> None:
    absent = uuid.uuid4()
    code, _, err = run_gc(
        capsys, "-storage", str(layout.directory), "-keep", str(layout.snapshot), "-keep", str(absent)
    )
    assert code == 0
    assert err == f"ember gc: warning: root {absent} is not in {layout.storage.url}\n"


def test_help_documents_roots_and_the_refusal(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["gc", "-help"])
    assert stopped.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Without any root gc refuses to run (exit 2)" in text
    assert "-all-unreferenced" in text and "-roots-file" in text and "(default 24h)" in text
    assert "(default true)" in text  # -dry-run


def test_the_real_process_exits_0_and_1(layout: Layout, closed_port_url: str) -> None:
    command = [sys.executable, "-m", "ember", "gc", "-keep", str(layout.snapshot), "-dry-run=false"]
    done = subprocess.run(
        [*command, "-storage", str(layout.directory)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "deleted 2 builds" in done.stdout
    assert not layout.builds() & layout.doomed
    environment = {
        **os.environ,
        "AWS_ENDPOINT_URL": closed_port_url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    done = subprocess.run(
        [*command, "-storage", "s3://no-such-endpoint"],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("ember gc: ") and done.stderr.count("\n") == 1

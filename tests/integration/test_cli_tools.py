"""The build-format tools as a user runs them: the real ``ember`` process, real files, real exit codes.

The chain under test is written by hand with struct.pack, byte for byte as the original
system lays out V3 headers (64-byte prefix, 40-byte records), so ember is checked against
the format itself and not against its own writer.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BLOCK = 4096
NIL = uuid.UUID(int=0)
A = uuid.UUID("aaaaaaaa-0000-4000-8000-000000000001")
B = uuid.UUID("bbbbbbbb-0000-4000-8000-000000000002")
C = uuid.UUID("cccccccc-0000-4000-8000-000000000003")
DEVICE_BLOCKS = 16
KERNEL = "vmlinux-6.1.158"
FIRECRACKER = "v1.14.1_431f1fc"


def v3_header(generation: int, build: uuid.UUID, rows: Sequence[tuple[int, int, uuid.UUID, int]]) -> bytes:
    """A V3 header; rows are (offset, length, build, storage offset) in blocks."""
    prefix = struct.pack("<QQQQ16s16s", 3, BLOCK, DEVICE_BLOCKS * BLOCK, generation, build.bytes, A.bytes)
    body = b"".join(
        struct.pack("<QQ16sQ", off * BLOCK, length * BLOCK, row_build.bytes, storage * BLOCK)
        for off, length, row_build, storage in rows
    )
    return prefix + body


def block(tag: int) -> bytes:
    return bytes([tag]) * BLOCK


@dataclass(frozen=True)
class Chain:
    storage: Path

    def build_dir(self, build: uuid.UUID) -> Path:
        return self.storage / "templates" / str(build)


@pytest.fixture
def chain(tmp_path: Path) -> Chain:
    """A <- B <- C, rootfs only (filesystem-only builds), laid out as the seed's local storage."""
    layers = {
        A: (1, [(0, 8, A, 0), (8, 8, NIL, 0)], [block(0xA0 + i) for i in range(8)]),
        B: (
            2,
            [(0, 2, A, 0), (2, 2, B, 0), (4, 4, A, 4), (8, 2, NIL, 8), (10, 1, B, 2), (11, 5, NIL, 11)],
            [block(0xB0 + i) for i in range(3)],
        ),
        C: (
            3,
            [
                (0, 2, A, 0),
                (2, 1, B, 0),
                (3, 3, C, 0),
                (6, 2, A, 6),
                (8, 2, NIL, 8),
                (10, 1, B, 2),
                (11, 5, NIL, 11),
            ],
            [block(0xC0 + i) for i in range(3)],
        ),
    }
    result = Chain(tmp_path / "store")
    for build, (generation, rows, blocks) in layers.items():
        directory = result.build_dir(build)
        directory.mkdir(parents=True)
        (directory / "rootfs.ext4.header").write_bytes(v3_header(generation, build, rows))
        (directory / "rootfs.ext4").write_bytes(b"".join(blocks))
        metadata = {
            "version": 2,
            "template": {
                "build_id": str(build),
                "kernel_version": KERNEL,
                "firecracker_version": FIRECRACKER,
            },
            "context": {},
            "filesystem_only": True,
        }
        (directory / "metadata.json").write_text(json.dumps(metadata))
    return result


def ember(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ember", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], command: str, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ember {command}: "), result.stderr
    for fragment in fragments:
        assert fragment in last, last


def test_inspect_build_prints_every_mapping_in_the_original_format(chain: Chain) -> None:
    result = ember("inspect-build", "-build", str(C), "-storage", str(chain.storage), "-rootfs")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Generation         3" in lines
    assert f"Base build ID      {A}" in lines
    assert "Size               65536 B (0 MiB)" in lines
    assert "MAPPING (7 maps, uses <1 KiB in storage)" in lines
    assert f"3-6            [      12288,      24576) := [          0,      12288) ⊂ {C}, 12288 B" in lines
    assert f"8-10           [      32768,      40960) := [      32768,      40960) ⊂ {NIL}, 8192 B" in lines
    assert f"{C} (current): 3 blocks, 0 MiB (18.75%)" in lines
    assert f"{A} (parent): 4 blocks, 0 MiB (25.00%)" in lines
    assert f"{NIL} (sparse): 7 blocks, 0 MiB (43.75%)" in lines


def test_inspect_build_data_scans_the_packed_object(chain: Chain) -> None:
    (chain.build_dir(C) / "rootfs.ext4").write_bytes(block(0xC0) + bytes(BLOCK) + block(0xC2))
    result = ember(
        "inspect-build", f"-build={C}", "--storage", str(chain.storage), "-rootfs", "-data", "-end", "2"
    )
    assert result.returncode == 0, result.stderr
    assert "0 [0,4096) 4096 non-zero bytes" in result.stdout
    assert "1 [4096,8192) EMPTY" in result.stdout
    assert "2 [8192" not in result.stdout


def test_inspect_build_json_names_roles(chain: Chain) -> None:
    result = ember("inspect-build", "-build", str(C), "-storage", str(chain.storage), "-rootfs", "-json")
    report = json.loads(result.stdout)
    assert report["header"]["version"] == 3
    assert report["image"]["diff_size"] == 3 * BLOCK
    roles = {entry["build_id"]: entry["role"] for entry in report["mappings"]["by_build"]}
    assert roles == {str(A): "parent", str(B): "ancestor", str(C): "current", str(NIL): "zero"}


def test_show_build_diff_merges_only_the_diff_builds_own_mappings(chain: Chain) -> None:
    result = ember(
        "show-build-diff",
        "-from-build",
        str(B),
        "-to-build",
        str(C),
        "-storage",
        str(chain.storage),
        "-rootfs",
        "-visualize",
    )
    assert result.returncode == 0, result.stderr
    merged = result.stdout.split("MERGED METADATA")[1].split("\nMERGED\n")[0]
    rows = [line.split(" ⊂ ")[1] for line in merged.splitlines() if " ⊂ " in line]
    assert rows == [
        f"{A}, 8192 B",
        f"{B}, 4096 B",
        f"{C}, 12288 B",
        f"{A}, 8192 B",
        f"{NIL}, 8192 B",
        f"{B}, 4096 B",
        f"{NIL}, 20480 B",
    ]
    grids = result.stdout.split("\nMERGED\n")[1].splitlines()
    assert grids[0] == "░░▓███░░▓▓▓▓▓▓▓▓"
    assert result.stderr == ""


def test_copy_build_copies_exactly_the_referenced_objects_byte_for_byte(chain: Chain, tmp_path: Path) -> None:
    destination = tmp_path / "copy"
    result = ember("copy-build", "-build", str(C), "-from", str(chain.storage), "-to", str(destination))
    assert result.returncode == 0, result.stderr
    copied = sorted(
        p.relative_to(destination / "templates").as_posix()
        for p in (destination / "templates").rglob("*")
        if p.is_file()
    )
    assert copied == sorted(
        [
            f"{A}/rootfs.ext4",
            f"{B}/rootfs.ext4",
            f"{C}/rootfs.ext4",
            f"{C}/rootfs.ext4.header",
            f"{C}/metadata.json",
        ]
    )
    for name in copied:
        assert (destination / "templates" / name).read_bytes() == (
            chain.storage / "templates" / name
        ).read_bytes()
    assert "Copying 5 files" in result.stderr
    assert f"Build '{C}' copied to '{destination}'" in result.stderr

    again = ember("copy-build", "-build", str(C), "-from", str(chain.storage), "-to", str(destination))
    assert again.stderr.count("already exists, skipping") == 5


def test_copy_build_team_prints_the_seed_sql(chain: Chain, tmp_path: Path) -> None:
    team = "6a2e3f7e-0000-4000-8000-00000000000e"
    result = ember(
        "copy-build",
        "-build",
        str(C),
        "-from",
        str(chain.storage),
        "-to",
        str(tmp_path / "copy"),
        "-team",
        team,
        "-envd-version",
        "0.2.11",
        "-vcpu",
        "4",
        "-memory",
        "2048",
        "-tag",
        "prod",
    )
    assert result.returncode == 0, result.stderr
    env_id = result.stderr.split("Generated env ID: ")[1].split()[0]
    assert len(env_id) == 20 and env_id.isalnum() and env_id.lower() == env_id
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "BEGIN;" and lines[-1] == "COMMIT;"
    assert lines[1] == (
        f"INSERT INTO public.envs (id, team_id, updated_at, public, source) VALUES "
        f"('{env_id}', '{team}', NOW(), FALSE, 'template');"
    )
    assert (
        f"VALUES ('{C}', '{env_id}', NOW(), NOW(), 'uploaded', 2048, 4, 'vmlinux-6.1.158', "
        f"'v1.14.1_431f1fc', '0.2.11', 1024, 1024);"
    ) in lines[2]
    assert lines[3].endswith(f"VALUES ('{env_id}', '{C}', 'prod');")


@pytest.mark.emulator
def test_copy_build_between_every_kind_of_storage(
    chain: Chain, tmp_path: Path, gcs_emulator: Any, s3_server: Any
) -> None:
    env = {
        "STORAGE_EMULATOR_HOST": gcs_emulator.url,
        "AWS_ENDPOINT_URL": s3_server.url,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_DEFAULT_REGION": s3_server.region,
    }
    prefix = uuid.uuid4().hex
    hops = [
        str(chain.storage),
        f"gs://{gcs_emulator.bucket}/{prefix}",
        f"s3://{s3_server.bucket}/{prefix}",
        str(tmp_path / "back"),
    ]
    for source, destination in itertools.pairwise(hops):
        result = ember("copy-build", "-build", str(C), "-from", source, "-to", destination, env=env)
        assert result.returncode == 0, result.stderr
    inspect = ember("inspect-build", "-build", str(C), "-storage", hops[2], "-rootfs", env=env)
    assert f"{C} (current): 3 blocks" in inspect.stdout
    for build in (A, B, C):
        back = (tmp_path / "back" / "templates" / str(build) / "rootfs.ext4").read_bytes()
        assert back == (chain.build_dir(build) / "rootfs.ext4").read_bytes()


def test_truncated_header_is_one_clear_line(chain: Chain) -> None:
    header = chain.build_dir(C) / "rootfs.ext4.header"
    header.write_bytes(header.read_bytes()[: 64 + 20])
    result = ember("inspect-build", "-build", str(C), "-storage", str(chain.storage), "-rootfs")
    assert_one_line_error(result, "inspect-build")
    assert result.returncode == 1


def test_zero_block_size_is_one_clear_line(chain: Chain) -> None:
    header = chain.build_dir(C) / "rootfs.ext4.header"
    data = bytearray(header.read_bytes())
    data[8:16] = bytes(8)
    header.write_bytes(bytes(data))
    result = ember("inspect-build", "-build", str(C), "-storage", str(chain.storage), "-rootfs")
    assert_one_line_error(result, "inspect-build", "block size cannot be zero")


def test_unknown_build_is_one_clear_line(chain: Chain) -> None:
    unknown = uuid.uuid4()
    result = ember("inspect-build", "-build", str(unknown), "-storage", str(chain.storage))
    assert_one_line_error(result, "inspect-build", str(unknown))
    assert result.returncode == 1


def test_non_uuid_build_id_is_a_usage_error(chain: Chain) -> None:
    result = ember("copy-build", "-build", "latest", "-from", str(chain.storage), "-to", "/tmp/x")
    assert_one_line_error(result, "copy-build", "'latest' is not a build id")
    assert result.returncode == 2


def test_missing_ancestor_object_fails_the_copy_without_a_complete_build(
    chain: Chain, tmp_path: Path
) -> None:
    (chain.build_dir(A) / "rootfs.ext4").unlink()
    destination = tmp_path / "copy"
    result = ember("copy-build", "-build", str(C), "-from", str(chain.storage), "-to", str(destination))
    assert_one_line_error(result, "copy-build", f"{A}/rootfs.ext4")
    left = [p.name for p in destination.rglob("*") if p.is_file()]
    assert "metadata.json" not in left
    assert not (destination / "templates" / str(A) / "rootfs.ext4").exists()
    assert all(not name.startswith(".") for name in left), left


def test_unreachable_bucket_is_one_clear_line(chain: Chain, closed_port_url: str, tmp_path: Path) -> None:
    env = {
        "AWS_ENDPOINT_URL": closed_port_url,
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    result = ember(
        "copy-build", "-build", str(C), "-from", str(chain.storage), "-to", "s3://nowhere", env=env
    )
    assert_one_line_error(result, "copy-build", "cannot reach")


def test_clean_nfs_cache_dry_run_by_default(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    chunks = cache / str(A) / "memfile"
    chunks.mkdir(parents=True)
    (chunks / "000000000000-4194304.bin").write_bytes(b"x" * 100)
    old = 1_000_000_000
    os.utime(chunks / "000000000000-4194304.bin", (old, old))
    result = ember("clean-nfs-cache", "-target-bytes-to-delete", "1", "-grace", "0s", str(cache))
    assert result.returncode == 0, result.stderr
    assert f"would remove build dir (dry run): {cache / str(A)}" in result.stdout
    assert (chunks / "000000000000-4194304.bin").exists()

    result = ember("clean-nfs-cache", "-target-bytes-to-delete=1", "-grace=0s", "-dry-run=false", str(cache))
    assert result.returncode == 0, result.stderr
    assert not (cache / str(A)).exists()


def test_clean_nfs_cache_refuses_a_tree_that_is_not_a_cache(tmp_path: Path) -> None:
    (tmp_path / "home" / "user").mkdir(parents=True)
    (tmp_path / "home" / "user" / "notes.txt").write_text("keep me")
    result = ember(
        "clean-nfs-cache", "-dry-run=false", "-target-bytes-to-delete", "1", str(tmp_path / "home")
    )
    assert_one_line_error(result, "clean-nfs-cache")
    assert (tmp_path / "home" / "user" / "notes.txt").exists()


def test_hammer_file_reports_both_scenarios_and_writes_gantt_files(tmp_path: Path) -> None:
    objects = tmp_path / "bucket" / str(A)
    objects.mkdir(parents=True)
    (objects / "memfile").write_bytes(os.urandom(9 << 20))
    result = ember(
        "hammer-file", "-bucket", f"file://{tmp_path / 'bucket'}", "-object", f"{A}/memfile", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "File size: 9437184 bytes (9.44 MB)" in result.stdout
    assert "Scenario 1" in result.stdout and "Scenario 2" in result.stdout
    scenario1 = (tmp_path / "scenario1.mmd").read_text()
    assert scenario1.startswith("gantt") and scenario1.count("Chunk ") == 3
    assert (tmp_path / "scenario2.mmd").read_text().count("Chunk ") == 2


def test_hammer_file_without_its_flags_is_a_usage_error() -> None:
    result = ember("hammer-file")
    assert_one_line_error(result, "hammer-file", "-bucket")
    assert result.returncode == 2


def test_help_lists_every_command_and_commands_have_help() -> None:
    result = ember("-help")
    for name in ("inspect-build", "show-build-diff", "copy-build", "clean-nfs-cache", "hammer-file"):
        assert name in result.stdout
        assert ember(name, "-help").returncode == 0


def _patch_prefix(path: Path, offset: int, value: int) -> None:
    """Overwrite one u64 field of a header's 64-byte prefix (8 block size, 16 size, 24 generation)."""
    data = bytearray(path.read_bytes())
    data[offset : offset + 8] = struct.pack("<Q", value)
    path.write_bytes(bytes(data))


def test_inspect_data_with_a_block_size_of_2_63_is_one_clear_line(chain: Chain) -> None:
    _patch_prefix(chain.build_dir(C) / "rootfs.ext4.header", 8, 1 << 63)
    result = ember("inspect-build", "-build", str(C), "-storage", str(chain.storage), "-rootfs", "-data")
    assert_one_line_error(result, "inspect-build", f"has block size {1 << 63}", "4096 or 2097152")
    assert result.returncode == 1


def test_a_header_claiming_a_device_of_2_64_bytes_is_one_clear_line(chain: Chain) -> None:
    _patch_prefix(chain.build_dir(C) / "rootfs.ext4.header", 16, (1 << 64) - BLOCK)
    result = ember("inspect-build", "-build", str(C), "-storage", str(chain.storage), "-rootfs")
    assert_one_line_error(result, "inspect-build", "over the 16 TiB")


def test_inspect_data_fails_on_a_truncated_ancestor_object_naming_it(chain: Chain) -> None:
    truncated = chain.build_dir(A) / "rootfs.ext4"
    truncated.write_bytes(truncated.read_bytes()[: 5 * BLOCK])  # C reads A's blocks up to 8
    result = ember("inspect-build", "-build", str(C), "-storage", str(chain.storage), "-rootfs", "-data")
    assert_one_line_error(result, "inspect-build", "1 of 3 data objects", "missing or truncated")
    problems = result.stderr.strip().splitlines()[:-1]
    assert problems == [
        f"ember inspect-build: build {A}: '{A}/rootfs.ext4' is {5 * BLOCK} bytes, but the header reads up to "
        f"byte {8 * BLOCK}: the object is truncated"
    ]
    assert f"{A} {A}/rootfs.ext4: {5 * BLOCK} B, header reads {8 * BLOCK} B: TRUNCATED" in result.stdout
    assert f"{C} {C}/rootfs.ext4: {3 * BLOCK} B, header reads {3 * BLOCK} B: ok" in result.stdout


def test_inspect_data_passes_a_complete_chain(chain: Chain) -> None:
    result = ember(
        "inspect-build", "-build", str(C), "-storage", str(chain.storage), "-rootfs", "-data", "-json"
    )
    assert result.returncode == 0, result.stderr
    objects = json.loads(result.stdout)["data"]["objects"]
    assert [(entry["build_id"], entry["ok"]) for entry in objects] == [
        (str(A), True),
        (str(B), True),
        (str(C), True),
    ]


def test_copy_build_refuses_to_complete_a_copy_of_a_truncated_object(chain: Chain, tmp_path: Path) -> None:
    truncated = chain.build_dir(B) / "rootfs.ext4"
    truncated.write_bytes(truncated.read_bytes()[:BLOCK])  # C reads B's blocks 0 and 2
    destination = tmp_path / "copy"
    result = ember("copy-build", "-build", str(C), "-from", str(chain.storage), "-to", str(destination))
    assert_one_line_error(result, "copy-build", f"build {B}: '{B}/rootfs.ext4' is {BLOCK} bytes", "truncated")
    assert "metadata.json was not written" in result.stderr
    assert not (destination / "templates" / str(C) / "metadata.json").exists()


def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def _exited_process() -> tuple[int, str]:
    """The pid and start time of a process that has exited: the writer of an interrupted copy."""
    script = "import os; print(os.getpid(), open('/proc/self/stat').read())"
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    pid, stat_line = output.split(" ", 1)
    return int(pid), stat_line.rsplit(")", 1)[1].split()[19]


def test_copy_build_removes_the_temporaries_of_an_interrupted_copy_and_says_so(
    chain: Chain, tmp_path: Path
) -> None:
    destination = tmp_path / "copy"
    folder = destination / "templates" / str(A)
    folder.mkdir(parents=True)
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8]
    dead_pid, dead_start = _exited_process()
    stale = folder / f".rootfs.ext4.{boot}-{dead_pid}-{dead_start}.x1y2z3w4.tmp"
    stale.write_bytes(b"half of a memfile")
    live = folder / f".rootfs.ext4.{boot}-{os.getpid()}-{_start_time(os.getpid())}.a1b2c3d4.tmp"
    live.write_bytes(b"another copy still writing")
    result = ember("copy-build", "-build", str(C), "-from", str(chain.storage), "-to", str(destination))
    assert result.returncode == 0, result.stderr
    assert f"- removed '{stale}': a temporary left by an interrupted copy or upload" in result.stderr
    assert not stale.exists()
    assert live.exists()
    assert (folder / "rootfs.ext4").read_bytes() == (chain.build_dir(A) / "rootfs.ext4").read_bytes()

"""The seed's chain under QEMU/TCG: create a build, pause two generations on top, resume the last.

One create-build (module fixture) carries a process started by its start command: a counter
that keeps running across every pause and resume, so "memory intact" is something the
guest itself shows. Everything goes through the real ``ember`` command.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from sandbox_traces import Run, descendants, ember_env, wait_all_gone

pytestmark = [
    pytest.mark.vm,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes need root for network namespaces and mounts"),
]

# The counter is written to a side file and renamed into place: a plain ``echo > /tmp/counter``
# truncates first, and a reader landing between truncate and write would see an empty file.
COUNTER = (
    "nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.new;"
    " mv /tmp/counter.new /tmp/counter; sleep 0.2; done' >/dev/null 2>&1 &"
)


def _ember(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ember", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=ember_env(),
        check=False,
    )


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[uuid.UUID]]:
    storage = tmp_path_factory.mktemp("resume") / "store"
    builds = [uuid.uuid4() for _ in range(3)]
    created = _ember(
        "create-build", "-to-build", str(builds[0]), "-storage", str(storage), "-hugepages=false",
        "-memory", "512", "-disk", "512", "-start-cmd", COUNTER, "-ready-cmd", "test -s /tmp/counter",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr + created.stdout
    for generation, (parent, child) in enumerate(itertools.pairwise(builds), start=2):
        paused = _ember(
            "resume-build", "-from-build", str(parent), "-to-build", str(child), "-storage", str(storage),
            "-cmd-pause", f"echo generation {generation} > /root/gen{generation}.txt",
        )  # fmt: skip
        assert paused.returncode == 0, paused.stderr + paused.stdout
        assert f"✅ Build finished: {child}" in paused.stdout
    return storage, builds


def test_the_newest_build_sees_every_generations_files(chain: tuple[Path, list[uuid.UUID]]) -> None:
    storage, builds = chain
    result = _ember("resume-build", "-from-build", str(builds[2]), "-storage", str(storage), "-cmd",
                    "cat /root/gen2.txt /root/gen3.txt")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "generation 2\ngeneration 3\n" in result.stdout
    assert re.search(r"Resume: [\d.]+ms, Command: [\d.]+ms, Total: [\d.]+ms, exit code 0", result.stdout)


def test_inspect_shows_the_third_generation_mapping_into_all_three_builds(
    chain: tuple[Path, list[uuid.UUID]],
) -> None:
    storage, builds = chain
    report = _ember("inspect-build", "-build", str(builds[2]), "-storage", str(storage)).stdout
    assert "Generation         3" in report
    summary = report.split("MAPPING SUMMARY")[1]
    for build in builds:
        assert str(build) in summary


def test_a_process_started_before_the_pauses_is_still_counting(chain: tuple[Path, list[uuid.UUID]]) -> None:
    storage, builds = chain
    command = "a=$(cat /tmp/counter); sleep 1; b=$(cat /tmp/counter); echo counter $a $b"
    result = _ember("resume-build", "-from-build", str(builds[2]), "-storage", str(storage), "-cmd", command)
    assert result.returncode == 0, result.stderr
    found = re.search(r"^counter (\d+) (\d+)$", result.stdout, re.M)
    assert found, result.stdout
    first, second = int(found.group(1)), int(found.group(2))
    assert first > 1, "the counter restarted instead of continuing"
    assert second > first


def test_iterations_print_the_seed_statistics(chain: tuple[Path, list[uuid.UUID]]) -> None:
    storage, builds = chain
    result = _ember(
        "resume-build", "-from-build", str(builds[0]), "-storage", str(storage), "-iterations", "3"
    )
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"^\[ ?\d\] [\d.]+ms  [+-][\d.]+%$", result.stdout, re.M)) == 3
    assert re.search(
        r"^Min: [\d.]+ms \| Max: [\d.]+ms \| Avg: [\d.]+ms \| StdDev: [\d.]+ms$", result.stdout, re.M
    )
    assert re.search(r"^P95: [\d.]+ms \| P99: [\d.]+ms$", result.stdout, re.M)


def test_interactive_mode_serves_envd_until_ctrl_c_then_cleans_up(
    chain: tuple[Path, list[uuid.UUID]],
) -> None:
    storage, builds = chain
    env = ember_env()
    process = subprocess.Popen(
        [sys.executable, "-m", "ember", "resume-build", "-from-build", str(builds[0]),
         "-storage", str(storage), "-iterations", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while not lines or "Press Ctrl+C" not in lines[-1]:
        assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
        lines.append(process.stdout.readline())
    address = re.search(r"envd: (http://[\d.]+:49983)", "".join(lines))
    assert address, "".join(lines)
    with urllib.request.urlopen(f"{address.group(1)}/health", timeout=10) as answer:
        assert answer.status == 204
    run = Run.from_output("".join(lines), process.pid, storage / "orchestrator")
    assert run.processes(), "no QEMU named after the printed sandbox id"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "Stopping the sandbox" in out
    run.assert_gone(within_s=2)


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_sigkill_during_pause_leaves_the_parent_untouched_and_no_complete_build(
    chain: tuple[Path, list[uuid.UUID]],
) -> None:
    storage, builds = chain
    parent = storage / "templates" / str(builds[1])
    before = _digests(parent)
    child = uuid.uuid4()
    env = ember_env()
    process = subprocess.Popen(
        [sys.executable, "-m", "ember", "resume-build", "-from-build", str(builds[1]),
         "-to-build", str(child), "-storage", str(storage), "-signal-pause", "SIGUSR1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert process.stdout is not None
    deadline = time.monotonic() + 120
    lines = [process.stdout.readline()]
    while "Waiting for SIGUSR1" not in lines[-1]:
        assert time.monotonic() < deadline and process.poll() is None, (
            process.stderr.read() if process.stderr else ""
        )
        lines.append(process.stdout.readline())
    run = Run.from_output("".join(lines), process.pid, storage / "orchestrator")
    started = descendants(process.pid)
    process.send_signal(signal.SIGUSR1)
    # Killed as soon as it reports the VM paused: device state, diffs and upload are still ahead.
    while "Paused" not in process.stdout.readline():
        assert time.monotonic() < deadline and process.poll() is None, "the pause never started"
    process.kill()
    process.communicate(timeout=30)
    wait_all_gone(started)  # its sandbox process and QEMU ended with it, none stuck in D state
    assert _digests(parent) == before
    assert not (storage / "templates" / str(child) / "metadata.json").exists()
    # The next ember command reclaims what the dead one left: slot, workspace, sockets.
    after = _ember("resume-build", "-from-build", str(builds[0]), "-storage", str(storage), "-cmd", "true")
    assert after.returncode == 0, after.stderr
    run.assert_gone(within_s=2)

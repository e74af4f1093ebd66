"""A process the node forks dies with its owner even when it is stuck and never reads its pipe again.

The owner here is a small Python process that forks one child through the node's fork server
(``worker.fork_context``); the child does what every node child does first
(``become_child_of_node``) and then sleeps forever, as a sandbox process stuck in a request
would. The owner is SIGKILLed: the child must be gone within seconds. Before the fix, every
child held the fork server's "alive" pipe, so the fork server never saw its owner go, and the
child's PDEATHSIG (tied to the fork server) never fired: both lived on for good.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ember.sandbox.worker import become_child_of_node

OWNER = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
import test_owner_death
from ember.sandbox.worker import fork_context
child = fork_context().Process(target=test_owner_death.stuck_child, args=(sys.argv[2],), daemon=True)
child.start()
while not (os.path.exists(sys.argv[2]) and open(sys.argv[2]).read()):
    time.sleep(0.05)
os.kill(os.getpid(), signal.SIGKILL)
"""


def stuck_child(pid_file: str) -> None:
    """The child: a node child that never answers again (runs in the fork server's child)."""
    become_child_of_node(logging.WARNING)
    Path(pid_file).write_text(str(os.getpid()))
    while True:
        time.sleep(1)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_stuck_child_of_the_node_dies_when_its_owner_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    owner = subprocess.run(
        [sys.executable, "-c", OWNER, str(Path(__file__).parent), str(pid_file)], timeout=60, check=False
    )
    assert owner.returncode == -signal.SIGKILL
    child = int(pid_file.read_text())
    try:
        deadline = time.monotonic() + 10
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(child), "the stuck child outlived its owner"
    finally:
        if _running(child):
            os.kill(child, signal.SIGKILL)

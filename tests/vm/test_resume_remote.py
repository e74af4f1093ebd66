"""Resume and pause with builds in object storage: GCS (gcp-storage-emulator) and S3 (moto).

The build is made locally, copied to the bucket with copy-build, then resumed from the
bucket: only the chunks the guest touches are fetched (counted with -v), and a pause
writes the new build back to the bucket, where it resumes again.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from ember.guest import cache_dir

pytestmark = [
    pytest.mark.vm,
    pytest.mark.emulator,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes need root for network namespaces and mounts"),
]


def _ember(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ember", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HOST_KERNELS_DIR": str(cache_dir() / "kernels"), **env},
        check=False,
    )


@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_resume_and_pause_against_a_bucket(
    tmp_path: Path, gcs_emulator: Any, s3_server: Any, bucket_env: dict[str, str], scheme: str
) -> None:
    env = {
        **bucket_env,
        "SNAPSHOT_CACHE_DIR": str(tmp_path / "chunks"),
        "ORCHESTRATOR_BASE_PATH": str(tmp_path / "orchestrator"),
    }
    local = tmp_path / "local"
    bucket = f"{scheme}://{gcs_emulator.bucket if scheme == 'gs' else s3_server.bucket}/{uuid.uuid4().hex}"
    build, paused = uuid.uuid4(), uuid.uuid4()
    small = ["-hugepages=false", "-memory", "512", "-disk", "512"]
    start = ["-start-cmd", "echo here > /root/started"]
    created = _ember("create-build", "-to-build", str(build), "-storage", str(local), *small, *start, env=env)
    assert created.returncode == 0, created.stderr
    copied = _ember("copy-build", "-build", str(build), "-from", str(local), "-to", bucket, env=env)
    assert copied.returncode == 0, copied.stderr

    pause = ["-to-build", str(paused), "-cmd-pause", "cat /root/started && echo again > /root/again"]
    resumed = _ember("resume-build", "-from-build", str(build), "-storage", bucket, "-v", *pause, env=env)
    assert resumed.returncode == 0, resumed.stderr
    fetched = re.search(r"storage chunks fetched: (\d+)", resumed.stdout)
    assert fetched, resumed.stdout
    memfile_chunks = (512 << 20) // (4 << 20)
    assert 0 < int(fetched.group(1)) < 2 * memfile_chunks, "more chunks than the memfile and rootfs hold"
    assert f"✅ Build finished: {paused}" in resumed.stdout

    again = _ember(
        "resume-build", "-from-build", str(paused), "-storage", bucket, "-cmd", "cat /root/again", env=env
    )
    assert again.returncode == 0, again.stderr
    assert "again" in again.stdout

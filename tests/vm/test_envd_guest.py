"""envd in a freshly booted guest, reached the way create-build reaches it: a network slot's NAT.

One cold boot of the default template (``Sandbox.boot`` over an image layer build, as
create-build does); the host drives the agent with the sandbox's client over the slot's host
address: a command with streamed output and its exit code, a file written and read back, a
directory listed, and a wrong access token refused.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from ember.build import TemplateInfo, TemplateMetadata
from ember.envd.client import EnvdClient, EnvdError
from ember.environment import Environment
from ember.guest import GuestKernel, cache_dir
from ember.sandbox import BootOptions, Node, Sandbox, SandboxState, store_image_build
from ember.sandbox.template import template_image
from ember.storage import LocalStorage

pytestmark = [
    pytest.mark.vm,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="network slots need root"),
]

TOKEN = "secret-token"


def test_envd_in_a_booted_guest_runs_commands_and_moves_files(
    tmp_path: Path, guest_kernel: GuestKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOST_KERNELS_DIR", str(cache_dir() / "kernels"))
    storage_dir = tmp_path / "store"
    env = Environment.resolve(str(storage_dir))
    image = template_image(None, 512, env, cache_dir(), tmp_path, lambda _: None)
    layer = uuid.uuid4()
    store_image_build(
        image,
        LocalStorage(storage_dir / "templates"),
        layer,
        TemplateMetadata(version=2, template=TemplateInfo(str(layer))),
        tmp_path,
    )
    with Node(str(storage_dir), env=env) as node:
        boot = BootOptions(layer, vcpu_count=1, memory_mib=512, access_token=TOKEN, envd_timeout_s=120)
        with Sandbox.boot(node, boot) as sandbox:
            assert sandbox.state is SandboxState.RUNNING
            client = sandbox.envd

            chunks: list[bytes] = []
            result = client.run(
                "echo one; sleep 0.3; echo two >&2; echo three; exit 7", on_stdout=chunks.append
            )
            assert result.exit_code == 7
            assert result.stdout == b"one\nthree\n"
            assert result.stderr == b"two\n"
            assert b"".join(chunks) == b"one\nthree\n"

            client.write_file("/root/data/blob.bin", bytes(range(256)) * 100)
            assert client.read_file("/root/data/blob.bin") == bytes(range(256)) * 100
            assert [entry.name for entry in client.list_dir("/root/data")] == ["blob.bin"]

            with pytest.raises(EnvdError) as refused:
                EnvdClient(sandbox.envd_url, access_token="wrong").run("true")
            assert refused.value.code == "unauthenticated"
        assert sandbox.state is SandboxState.STOPPED

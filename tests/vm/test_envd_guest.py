"""envd in a freshly booted guest, reached the way create-build reaches it: a network slot's NAT.

One boot of the default template; the host drives the agent with ember's client over the
slot's host address: a command with streamed output and its exit code, a file written and
read back, a directory listed, and a wrong access token refused.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ember.envd.client import EnvdClient, EnvdError
from ember.environment import Environment
from ember.guest import GuestKernel, cache_dir
from ember.sandbox.guest_agent import GuestAgent
from ember.sandbox.template import template_image
from ember.vmm.kernel_args import kernel_args
from ember.vmm.qemu import DriveConfig, MachineConfig, QemuVm

pytestmark = [
    pytest.mark.vm,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="network slots need root"),
]

TOKEN = "secret-token"


def test_envd_in_a_booted_guest_runs_commands_and_moves_files(
    tmp_path: Path, guest_kernel: GuestKernel, guest_initramfs: Path
) -> None:
    cached = template_image(
        None, 512, Environment.resolve(str(tmp_path)), cache_dir(), tmp_path, lambda _: None
    )
    image = tmp_path / "rootfs.ext4"
    subprocess.run(["cp", "--sparse=always", str(cached), str(image)], check=True)
    with GuestAgent.network(lambda _: None) as agent:
        config = MachineConfig(
            kernel_path=guest_kernel.vmlinuz_path,
            initrd_path=guest_initramfs,
            cmdline=kernel_args(ip=agent.ip_arg),
            memory_mib=512,
            drives=(DriveConfig(str(image)),),
            nics=agent.nics,
            netns=agent.netns,
        )
        with QemuVm(config, tmp_path / "vm") as vm:
            vm.boot()
            client = agent.connect(timeout_s=120, vm=vm, access_token=TOKEN)

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
                EnvdClient(agent.base_url, access_token="wrong").run("true")
            assert refused.value.code == "unauthenticated"

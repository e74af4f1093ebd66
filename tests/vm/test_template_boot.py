"""The default template boots under QEMU with ember-init and its agent answers on port 49983.

The guest's NIC is QEMU user networking with a host port forwarded to the agent.
"""

from __future__ import annotations

import http.client
import socket
import time
from pathlib import Path

import pytest

from ember.envd.bundle import build_agent
from ember.guest import (
    ENVD_PORT,
    GUEST_INIT_PATH,
    READY_MARKER,
    GuestKernel,
    assemble_template_image,
    default_template_rootfs,
)
from ember.vmm import VmState
from ember.vmm.kernel_args import ip_arg
from ember.vmm.qemu import DriveConfig, MachineConfig, NicConfig, QemuVm

pytestmark = pytest.mark.vm

DISK_MB = 512
BOOT_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _health_status(port: int) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def test_default_template_boots_to_a_healthy_agent_reachable_over_the_network(
    tmp_path: Path, guest_kernel: GuestKernel, guest_initramfs: Path
) -> None:
    envd = build_agent(tmp_path / "envd")
    image = assemble_template_image(default_template_rootfs(), tmp_path / "rootfs.ext4", DISK_MB, envd)
    port = _free_port()
    guest_ip = ip_arg("10.0.2.15", "10.0.2.2", "255.255.255.0")
    config = MachineConfig(
        kernel_path=guest_kernel.vmlinuz_path,
        initrd_path=guest_initramfs,
        cmdline=f"console=ttyS0 panic=-1 quiet init={GUEST_INIT_PATH} ip={guest_ip}",
        drives=(DriveConfig(str(image)),),
        nics=(NicConfig(host_forwards=((port, ENVD_PORT),)),),
    )
    with QemuVm(config, tmp_path / "run") as vm:
        vm.boot()
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        status = _health_status(port)
        while status != 204 and time.monotonic() < deadline and vm.state is VmState.RUNNING:
            time.sleep(0.1)
            status = _health_status(port)
        console = vm.console_path.read_text(errors="replace")
        assert status == 204, f"no healthy agent within {BOOT_TIMEOUT_S:.0f} s; console:\n{console[-2000:]}"
        assert vm.wait_for_console(READY_MARKER, timeout_s=5) == READY_MARKER
    assert f"EMBER-INITRAMFS-OK root=/dev/vda init={GUEST_INIT_PATH}" in console
    assert "ember-init:" not in console, console

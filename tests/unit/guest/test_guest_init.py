"""ember-init's shell functions, run by the host's sh with ``ip`` replaced by a recorder.

The boot sequence itself (mounts, envd, reaping) needs a guest: tests/vm/test_template_boot.py.
"""

from __future__ import annotations

import subprocess

import pytest

from ember.guest import GUEST_INIT_SCRIPT
from ember.vmm.kernel_args import ip_arg

FUNCTIONS = GUEST_INIT_SCRIPT.split("# Boot sequence", 1)[0]


def _run(commands: str) -> str:
    script = FUNCTIONS + 'ip() { echo "ip $*"; }\nsleep() { :; }\nhostname=\n' + commands
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize(
    "mask, prefix",
    [("255.255.255.252", "30"), ("255.255.255.0", "24"), ("255.255.0.0", "16"), ("0.0.0.0", "0")],
)
def test_netmasks_become_prefix_lengths(mask: str, prefix: str) -> None:
    assert _run(f"mask_prefix {mask}") == f"{prefix}\n"


@pytest.mark.parametrize("mask", ["255.0.255.0x", "255.255.255", "garbage"])
def test_malformed_netmasks_are_rejected(mask: str) -> None:
    assert _run(f"mask_prefix {mask} || echo rejected").endswith("rejected\n")


def test_the_originals_ip_argument_configures_address_link_and_default_route() -> None:
    value = "169.254.0.21::169.254.0.22:255.255.255.252:instance:lo:off:tap0"
    out = _run(f'configure_network "{value}"; echo "hostname=$hostname"')
    assert out.splitlines() == [
        "ip addr add 169.254.0.21/30 dev lo",
        "ip link set lo up",
        "ip route add default via 169.254.0.22 dev lo onlink",
        "hostname=instance",
    ]


def test_the_hostname_from_etc_hostname_wins_over_the_ip_argument() -> None:
    out = _run(
        'hostname=from-etc; configure_network "10.0.2.15::10.0.2.2:255.255.255.0:instance:lo:off"; '
        'echo "hostname=$hostname"'
    )
    assert out.splitlines()[-1] == "hostname=from-etc"


def test_an_interface_that_never_appears_fails_without_configuring() -> None:
    out = _run('configure_network "10.0.2.15::10.0.2.2:255.255.255.0:x:no-such-nic:off" || echo failed')
    assert "ip addr" not in out
    assert out.splitlines()[-2:] == ["ember-init: no network interface no-such-nic", "failed"]


def test_the_ip_argument_ember_renders_is_the_one_ember_init_parses() -> None:
    out = _run(f'configure_network "{ip_arg("10.0.2.15", "10.0.2.2", "255.255.255.0")}"').splitlines()
    assert out[0] == "ip addr add 10.0.2.15/24 dev eth0"


def test_the_script_is_valid_posix_sh() -> None:
    done = subprocess.run(["sh", "-n"], input=GUEST_INIT_SCRIPT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert GUEST_INIT_SCRIPT.startswith("#!/bin/sh\n")

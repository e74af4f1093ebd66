import pytest

from ember.errors import UsageError
from ember.vmm.kernel_args import ip_arg, kernel_args


def test_command_line_is_sorted_and_stable() -> None:
    assert kernel_args(console=False, pci=False) == (
        "i8042.noaux i8042.nokbd init=/sbin/ember-init "
        "ip=169.254.0.21::169.254.0.22:255.255.255.252:instance:eth0:off:tap0 ipv6.autoconf=1 ipv6.disable=0 "
        "loglevel=1 panic=1 pci=off quiet random.trust_cpu=on reboot=k rootflags=discard"
    )


def test_console_boots_log_to_the_serial_port_and_qemu_keeps_pci() -> None:
    args = kernel_args(console=True, pci=True).split()
    assert "console=ttyS0" in args and "loglevel=5" in args
    assert "quiet" not in args and "pci=off" not in args


def test_extra_arguments_are_added_and_reserved_ones_refused() -> None:
    assert "mitigations=off" in kernel_args(extra={"mitigations": "off"}).split()
    with pytest.raises(UsageError, match="'init' is reserved"):
        kernel_args(extra={"init": "/bin/sh"})


def test_ip_argument_uses_the_original_format() -> None:
    assert (
        ip_arg("10.0.2.15", "10.0.2.2", "255.255.255.0")
        == "10.0.2.15::10.0.2.2:255.255.255.0:instance:eth0:off:tap0"
    )

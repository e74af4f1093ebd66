from __future__ import annotations

from pathlib import Path

from ember.vmm.qemu import (
    Accel,
    DriveConfig,
    MachineConfig,
    MemoryFileConfig,
    NicConfig,
    choose_accel,
    qemu_argv,
)

KERNEL = Path("/cache/kernels/vmlinux-6.1/amd64/vmlinuz")
INITRD = Path("/cache/initramfs/abc.cpio.gz")


def _argv(config: MachineConfig, accel: Accel = Accel.TCG, incoming: bool = False) -> list[str]:
    return qemu_argv(
        config,
        accel=accel,
        console_path=Path("/run/vm/console.log"),
        qmp_path=Path("/run/vm/qmp.sock"),
        incoming=incoming,
    )


def _option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, value in enumerate(argv) if value == flag]


def test_a_plain_boot_is_q35_with_kernel_initrd_cmdline_console_and_qmp() -> None:
    config = MachineConfig(KERNEL, "console=ttyS0 quiet", initrd_path=INITRD, memory_mib=512, vcpu_count=2)
    argv = _argv(config)
    assert argv[:4] == ["setpriv", "--pdeathsig", "KILL", "--"]
    assert argv[4] == "qemu-system-x86_64"
    assert _option(argv, "-machine") == ["q35,accel=tcg"]
    assert _option(argv, "-m") == ["512M"]
    assert _option(argv, "-smp") == ["2"]
    assert _option(argv, "-kernel") == [str(KERNEL)]
    assert _option(argv, "-initrd") == [str(INITRD)]
    assert _option(argv, "-append") == ["console=ttyS0 quiet"]
    assert _option(argv, "-serial") == ["file:/run/vm/console.log"]
    assert _option(argv, "-qmp") == ["unix:/run/vm/qmp.sock,server=on,wait=off"]
    assert {"-nodefaults", "-no-reboot"} <= set(argv)
    assert "-incoming" not in argv
    assert "-cpu" not in argv


def test_kvm_uses_the_host_cpu() -> None:
    argv = _argv(MachineConfig(KERNEL, ""), accel=Accel.KVM)
    assert _option(argv, "-machine") == ["q35,accel=kvm"]
    assert _option(argv, "-cpu") == ["host"]


def test_nbd_urls_bypass_the_host_cache_and_files_use_it() -> None:
    drives = (
        DriveConfig("nbd+unix:///?socket=/run/nbd.sock", drive_id="rootfs"),
        DriveConfig("/images/data,1.ext4", drive_id="data", read_only=True),
    )
    argv = _argv(MachineConfig(KERNEL, "", drives=drives))
    assert _option(argv, "-drive") == [
        "file=nbd+unix:///?socket=/run/nbd.sock,format=raw,if=none,id=rootfs,cache=none",
        "file=/images/data,,1.ext4,format=raw,if=none,id=data,cache=writeback,readonly=on",
    ]
    assert _option(argv, "-device") == ["virtio-blk-pci,drive=rootfs", "virtio-blk-pci,drive=data"]


def test_a_memory_file_backs_guest_ram_shared_or_copy_on_write() -> None:
    shared = _argv(MachineConfig(KERNEL, "", memory_file=MemoryFileConfig(Path("/run/vm/mem"))))
    assert _option(shared, "-machine") == ["q35,accel=tcg,memory-backend=ram0"]
    assert _option(shared, "-object") == [
        "memory-backend-file,id=ram0,size=256M,mem-path=/run/vm/mem,share=on"
    ]
    private = _argv(
        MachineConfig(KERNEL, "", memory_file=MemoryFileConfig(Path("/run/vm/mem"), shared=False))
    )
    assert _option(private, "-object")[0].endswith("share=off")


def test_a_restore_waits_for_the_incoming_state() -> None:
    argv = _argv(MachineConfig(KERNEL, ""), incoming=True)
    assert argv[-2:] == ["-incoming", "defer"]


def test_pvm_kvm_falls_back_to_tcg_and_says_why(tmp_path: Path) -> None:
    dev_kvm = tmp_path / "kvm"
    dev_kvm.touch()
    (tmp_path / "module" / "kvm_pvm").mkdir(parents=True)
    choice = choose_accel(dev_kvm, tmp_path / "module")
    assert choice.accel is Accel.TCG
    assert "PVM" in choice.reason


def test_missing_dev_kvm_means_tcg(tmp_path: Path) -> None:
    choice = choose_accel(tmp_path / "kvm", tmp_path)
    assert choice.accel is Accel.TCG
    assert "does not exist" in choice.reason


def test_usable_kvm_without_pvm_is_chosen(tmp_path: Path) -> None:
    dev_kvm = tmp_path / "kvm"
    dev_kvm.touch()
    (tmp_path / "module" / "kvm_intel").mkdir(parents=True)
    assert choose_accel(dev_kvm, tmp_path / "module").accel is Accel.KVM


def test_tap_nic_carries_the_original_guest_mac_and_runs_in_the_namespace(tmp_path: Path) -> None:
    config = MachineConfig(kernel_path=Path("/k"), cmdline="x", nics=(NicConfig(tap="tap0"),), netns="ns-3")
    argv = qemu_argv(config, accel=Accel.TCG, console_path=tmp_path / "c", qmp_path=tmp_path / "q")
    assert argv[:7] == ["nsenter", "--net=/var/run/netns/ns-3", "--", "setpriv", "--pdeathsig", "KILL", "--"]
    assert "tap,id=net0,ifname=tap0,script=no,downscript=no" in argv
    assert "virtio-net-pci,netdev=net0,mac=02:FC:00:00:00:05" in argv


def test_user_mode_nic_forwards_host_ports_on_loopback_only(tmp_path: Path) -> None:
    config = MachineConfig(
        kernel_path=Path("/k"), cmdline="x", nics=(NicConfig(host_forwards=((18080, 49983),)),)
    )
    argv = qemu_argv(config, accel=Accel.TCG, console_path=tmp_path / "c", qmp_path=tmp_path / "q")
    assert "user,id=net0,hostfwd=tcp:127.0.0.1:18080-:49983" in argv
    assert argv[0] == "setpriv"

"""``ember create-build``: boot a template, run its start command, and snapshot it into a build."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ember.cli.flags import FlagParser, build_id, non_negative
from ember.errors import UsageError
from ember.sandbox.create import CreateOptions, CreateReport, create_build
from ember.storage import MEMFILE, METADATA, ROOTFS, SNAPFILE, BuildPaths, LocalStorage, Storage, open_storage
from ember.vmm.select import VmmName, choose_vmm

SUMMARY = "boot a template, run its start command, and snapshot it into a new build"


def build_parser() -> FlagParser:
    parser = FlagParser("ember create-build", SUMMARY)
    parser.add_flag(
        "to-build", help="output build ID (UUID, required)", metavar="<uuid>", type=build_id, required=True
    )
    parser.add_flag(
        "from-build",
        help="base build ID: start from its rootfs instead of the template image",
        metavar="<uuid>",
        type=build_id,
    )
    parser.add_flag(
        "template",
        help="template ID (default local-template; accepted for compatibility, unused by the QEMU path)",
        metavar="<id>",
        default="local-template",
    )
    parser.add_flag(
        "storage",
        help="local path, gs://bucket or s3://bucket (default .local-build)",
        metavar="<path>",
        default=".local-build",
    )
    parser.add_flag(
        "sandbox-dir",
        help="override SANDBOX_DIR (baked into Firecracker snapshots; QEMU builds do not depend on it)",
        metavar="<path>",
    )
    parser.add_flag(
        "kernel",
        help="kernel version (default: the Debian cloud kernel provisioned in local mode)",
        metavar="<version>",
    )
    parser.add_flag(
        "firecracker",
        help="Firecracker version, with -vmm firecracker (default v1.12.1)",
        metavar="<version>",
        default="v1.12.1",
    )
    parser.add_flag(
        "vmm",
        help="auto or qemu (default auto); builds use QEMU for now, with KVM where it runs Linux, else TCG",
        metavar="<name>",
        default="auto",
    )
    parser.add_flag(
        "image",
        help="root filesystem to build from: a directory or a tar (default: a small "
        "Debian bookworm made with debootstrap, cached)",
        metavar="<path>",
    )
    parser.add_flag("vcpu", help="vCPUs (default 2)", metavar="<n>", type=non_negative, default=2)
    parser.add_flag(
        "memory", help="memory in MB (default 1024)", metavar="<mb>", type=non_negative, default=1024
    )
    parser.add_flag("disk", help="disk in MB (default 1024)", metavar="<mb>", type=non_negative, default=1024)
    parser.add_bool("hugepages", help="2 MB memory pages (false: 4 KB pages)", default=True)
    parser.add_flag(
        "start-cmd", help="start command, left running in the snapshot", metavar="<cmd>", default=""
    )
    parser.add_flag(
        "ready-cmd", help="ready check command, retried until it exits 0", metavar="<cmd>", default=""
    )
    parser.add_flag(
        "timeout",
        help="minutes to wait for the ready command (default 5)",
        metavar="<minutes>",
        type=float,
        default=5.0,
    )
    parser.add_bool("v", help="verbose logging")
    return parser


def run(options: argparse.Namespace) -> int:
    if options.v:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    choice = choose_vmm(options.vmm)
    if choice.name is VmmName.FIRECRACKER:
        if options.vmm == "firecracker":
            raise UsageError(
                "create-build boots Linux guests with QEMU only for now (ember's Firecracker driver has "
                "no Linux-guest build path yet): pass -vmm qemu or -vmm auto"
            )
        choice = choose_vmm("qemu")
        print(f"VMM: qemu (create-build builds with QEMU; {choice.reason})")
    else:
        print(f"VMM: {choice.name.value} ({choice.reason})")
    report = create_build(
        CreateOptions(
            to_build=options.to_build,
            storage=options.storage,
            from_build=options.from_build,
            template=options.template,
            image=Path(options.image) if options.image else None,
            kernel=options.kernel,
            vcpu=options.vcpu,
            memory_mb=options.memory,
            disk_mb=options.disk,
            hugepages=options.hugepages,
            start_cmd=options.start_cmd,
            ready_cmd=options.ready_cmd,
            timeout_s=options.timeout * 60,
            sandbox_dir=Path(options.sandbox_dir) if options.sandbox_dir else None,
        ),
        progress=lambda line: print(line, flush=True),
    )
    print(f"✅ Build finished: {report.build_id}")
    _print_artifacts(open_storage(options.storage), report)
    return 0


def _print_artifacts(storage: Storage, report: CreateReport) -> None:
    paths = BuildPaths(report.build_id)
    print("📦 Artifacts:")
    if not isinstance(storage, LocalStorage):
        print(f"   Memfile: {storage.size(paths.data_object(MEMFILE)) / 1e6:.1f} MB")
        return
    root = storage.root / str(report.build_id)

    def on_disk(name: str) -> int:
        return (root / name).stat().st_blocks * 512

    for label, name, header in (
        ("Rootfs", ROOTFS, report.rootfs_header),
        ("Memfile", MEMFILE, report.memfile_header),
    ):
        total = header.metadata.size
        diff = on_disk(name)
        print(
            f"   {label}: {diff / 1e6:.1f} MB diff / {total / 1e6:.1f} MB total ({diff / total * 100:.1f}%), "
            f"block size: {header.metadata.block_size // 1024} KB"
        )
    for label, name in (
        ("Rootfs header", f"{ROOTFS}.header"),
        ("Memfile header", f"{MEMFILE}.header"),
        ("Snapfile", SNAPFILE),
        ("Metadata", METADATA),
    ):
        print(f"   {label}: {on_disk(name) / 1024:.1f} KB")
    print("   Phases: " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in report.phases_s.items()))

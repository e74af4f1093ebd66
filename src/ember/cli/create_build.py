"""``ember create-build``: boot a template, run its start command, and snapshot it into a build."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ember.cli.flags import FlagParser, build_id, non_negative, positive_float
from ember.cli.progress import EventPrinter, stop_on_signals
from ember.cli.render import DEFAULT_STORAGE
from ember.errors import UsageError
from ember.sandbox import CreateOptions, CreateReport, Node, SandboxEvent, check_options, create_build
from ember.storage import MEMFILE, METADATA, ROOTFS, SNAPFILE, BuildPaths, LocalStorage, Storage
from ember.vmm.select import VmmName, choose_vmm

SUMMARY = "boot a template, run its start command, and snapshot it into a new build"
DEFAULT_TEMPLATE = "local-template"


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
        help=f"template ID (default {DEFAULT_TEMPLATE}); ember stores builds by build ID only, "
        "so another value is refused",
        metavar="<id>",
        default=DEFAULT_TEMPLATE,
    )
    parser.add_flag(
        "storage",
        help=f"local path, gs://bucket or s3://bucket (default {DEFAULT_STORAGE})",
        metavar="<path>",
        default=DEFAULT_STORAGE,
    )
    parser.add_flag(
        "sandbox-dir",
        help="override SANDBOX_DIR for Firecracker builds; refused here, since builds are made with QEMU",
        metavar="<path>",
    )
    parser.add_flag(
        "kernel",
        help="kernel version (default: the Debian cloud kernel provisioned in local mode)",
        metavar="<version>",
    )
    parser.add_flag(
        "firecracker",
        help="Firecracker version; refused here: builds are made with QEMU (resume Firecracker builds "
        "with resume-build on a host whose KVM runs Linux guests)",
        metavar="<version>",
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
        type=positive_float,
        default=5.0,
    )
    parser.add_bool("v", help="verbose logging")
    return parser


def _refuse_unused(options: argparse.Namespace) -> None:
    """Flags of the seed that this build path cannot honour are refused, never silently ignored."""
    if options.template != DEFAULT_TEMPLATE:
        raise UsageError(
            f"-template {options.template!r}: ember's create-build stores builds by build ID only "
            "(a template ID belongs to the control plane's database): drop -template"
        )
    if options.firecracker is not None:
        raise UsageError(
            "-firecracker: create-build boots Linux guests with QEMU only (ember's Firecracker driver has "
            "no Linux-guest build path yet): drop -firecracker"
        )
    if options.sandbox_dir is not None:
        raise UsageError(
            "-sandbox-dir: QEMU builds do not bake SANDBOX_DIR into their snapshot: drop -sandbox-dir"
        )


def run(options: argparse.Namespace) -> int:
    if options.v:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    _refuse_unused(options)
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
    create = CreateOptions(
        to_build=options.to_build,
        from_build=options.from_build,
        image=Path(options.image) if options.image else None,
        kernel=options.kernel,
        vcpu=options.vcpu,
        memory_mb=options.memory,
        disk_mb=options.disk,
        hugepages=options.hugepages,
        start_cmd=options.start_cmd,
        ready_cmd=options.ready_cmd,
        timeout_s=options.timeout * 60,
    )
    check_options(create)
    printer = EventPrinter(options.v)

    def show(event: SandboxEvent) -> None:
        if event.name == "running" and event.fields.get("slot") is not None:
            print(f"✓ Sandbox {event.sandbox_id} running in network slot {event.fields['slot']}", flush=True)
        printer(event)

    with stop_on_signals(), Node(options.storage, events=show, idle_workers=1) as node:
        print(f"✓ Storage: {node.storage.url} ({'local' if node.env.local_mode else 'remote'})")
        print(f"Building with page size: {'2MB (hugepages)' if options.hugepages else '4KB (standard)'}")
        report = create_build(node, create)
        print(f"✅ Build finished: {report.build_id}")
        _print_artifacts(node.storage, report)
    return 0


def _print_artifacts(storage: Storage, report: CreateReport) -> None:
    paths = BuildPaths(report.build_id)
    print("📦 Artifacts:")
    if not isinstance(storage, LocalStorage):
        print(f"   Memfile: {storage.size(paths.data_object(MEMFILE)) / 1e6:.1f} MB")
        return

    def on_disk(name: str) -> int:
        return storage.path_of(f"{paths.build_id}/{name}").stat().st_blocks * 512

    for label, name, header in (
        ("Rootfs", ROOTFS, report.rootfs_header),
        ("Memfile", MEMFILE, report.memfile_header),
    ):
        if header is None:
            continue
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

"""``ember inspect-build``: a build's header (and optionally its data blocks), as the original prints it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ember.build.inspect import DataReport, HeaderReport, Role, inspect_header, scan_data
from ember.cli.flags import FlagParser, build_id, non_negative
from ember.cli.render import file_flag, print_metadata, storage_flag
from ember.errors import BuildError, UsageError
from ember.header import RECORD_BYTES, format_mapping
from ember.storage import open_storage

SUMMARY = "print a build's header: metadata, mappings and which build provides what"

_SUFFIX = {Role.CURRENT: " (current)", Role.PARENT: " (parent)", Role.ZERO: " (sparse)", Role.ANCESTOR: ""}


def build_parser() -> FlagParser:
    parser = FlagParser("ember inspect-build", SUMMARY)
    parser.add_flag("build", help="build ID (UUID, required)", metavar="<uuid>", type=build_id, required=True)
    storage_flag(parser)
    parser.add_bool("memfile", help="inspect the memfile artifact (the default)")
    parser.add_bool("rootfs", help="inspect the rootfs artifact")
    parser.add_bool("data", help="also scan the build's data blocks, not just the header")
    parser.add_flag(
        "start", help="first data block index (with -data)", metavar="<n>", type=non_negative, default=0
    )
    parser.add_flag(
        "end",
        help="end data block index, exclusive, 0 = all (with -data)",
        metavar="<n>",
        type=non_negative,
        default=0,
    )
    parser.add_bool("json", help="print the report as JSON")
    return parser


def run(options: argparse.Namespace) -> int:
    file_name = file_flag(options)
    if not options.data and (options.start or options.end):
        raise UsageError("-start and -end only apply with -data")
    if options.end and options.end <= options.start:
        raise UsageError(f"-end {options.end} must be greater than -start {options.start}")
    storage = open_storage(options.storage)
    report = inspect_header(storage, options.build, file_name)
    data = None
    if options.data:
        data = scan_data(storage, report.header, file_name, options.start, options.end)
    if options.json:
        json.dump(_as_json(report, data), sys.stdout, indent=2)
        print()
    else:
        _print_text(report, data)
    if data is not None and data.problems:
        for problem in data.problems:
            print(f"ember inspect-build: {problem}", file=sys.stderr)
        raise BuildError(
            f"{len(data.problems)} of {len(data.objects)} data objects that build {options.build}'s "
            f"{file_name} header reads are missing or truncated: copy or re-upload those builds"
        )
    return 0


def _print_text(report: HeaderReport, data: DataReport | None) -> None:
    metadata = report.header.metadata
    if report.validation_error:
        print(f"WARNING: the mapping does not validate: {report.validation_error}", file=sys.stderr)
    print_metadata("METADATA", report.source, metadata)
    table = report.header.mappings
    used_kib = len(table) * RECORD_BYTES // 1024
    print(f"\nMAPPING ({len(table)} maps, uses {used_kib if used_kib else '<1'} KiB in storage)")
    print("=======")
    for mapping in table:
        print(format_mapping(mapping, metadata.block_size))
    print("\nMAPPING SUMMARY")
    print("===============")
    for share in report.shares:
        percent = share.size_bytes / metadata.size * 100 if metadata.size else 0.0
        print(
            f"{share.build_id}{_SUFFIX[share.role]}: {share.size_bytes // metadata.block_size} blocks, "
            f"{share.size_bytes // (1 << 20)} MiB ({percent:0.2f}%)"
        )
    if data is not None:
        _print_data(data)


def _print_data(data: DataReport) -> None:
    print("\nDATA")
    print("====")
    print(f"Source             {data.key}")
    for block in data.blocks:
        state = f"{block.non_zero_bytes} non-zero bytes" if block.non_zero_bytes else "EMPTY"
        print(f"{block.index} [{block.offset},{block.offset + block.length}) {state}")
    empty = data.empty_blocks
    full = len(data.blocks) - empty
    print("\nDATA SUMMARY")
    print("============")
    print(f"Empty blocks       {empty} ({empty * data.block_size // (1 << 20)} MiB)")
    print(f"Non-empty blocks   {full} ({full * data.block_size // (1 << 20)} MiB)")
    print(f"Total blocks       {len(data.blocks)}")
    print("\nDATA OBJECTS")
    print("============")
    for check in data.objects:
        need = check.requirement
        size = "missing" if check.size_bytes is None else f"{check.size_bytes} B"
        verdict = "ok" if check.ok else ("MISSING" if check.size_bytes is None else "TRUNCATED")
        print(f"{need.build_id} {need.key}: {size}, header reads {need.needed_bytes} B: {verdict}")


def _as_json(report: HeaderReport, data: DataReport | None) -> dict[str, Any]:
    metadata = report.header.metadata
    own = sum(s.size_bytes for s in report.shares if s.role is Role.CURRENT)
    roles = {s.build_id: s.role.value for s in report.shares}
    document: dict[str, Any] = {
        "source": report.source,
        "artifact": report.file_name,
        "header": {
            "version": metadata.version,
            "header_size": report.header_size_bytes,
            "generation": metadata.generation,
            "block_size": metadata.block_size,
        },
        "image": {
            "virtual_size": metadata.size,
            "diff_size": own,
            "build_id": str(metadata.build_id),
            "base_build_id": str(metadata.base_build_id),
            "ancestors": [str(s.build_id) for s in report.shares if s.role in (Role.PARENT, Role.ANCESTOR)],
        },
        "mappings": {
            "count": len(report.header.mappings),
            "by_build": [
                {
                    "build_id": str(s.build_id),
                    "role": s.role.value,
                    "bytes": s.size_bytes,
                    "mappings": s.mappings,
                }
                for s in report.shares
            ],
            "list": [
                {
                    "offset": m.offset,
                    "length": m.length,
                    "build_id": str(m.build_id),
                    "role": roles[m.build_id],
                    "storage_offset": m.storage_offset,
                }
                for m in report.header.mappings
            ],
        },
        "validation_error": report.validation_error,
    }
    if data is not None:
        document["data"] = {
            "source": data.key,
            "block_size": data.block_size,
            "blocks": [
                {"index": b.index, "offset": b.offset, "length": b.length, "non_zero_bytes": b.non_zero_bytes}
                for b in data.blocks
            ],
            "empty_blocks": data.empty_blocks,
            "objects": [
                {
                    "build_id": str(c.requirement.build_id),
                    "key": c.requirement.key,
                    "size_bytes": c.size_bytes,
                    "needed_bytes": c.requirement.needed_bytes,
                    "ok": c.ok,
                }
                for c in data.objects
            ],
        }
    return document

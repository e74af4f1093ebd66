"""``ember show-build-diff``: preview what merging a diff build's header over its base gives."""

from __future__ import annotations

import argparse
import sys
import uuid

from ember.build.inspect import inspect_header
from ember.cli.flags import FlagParser, build_id
from ember.cli.render import file_flag, print_metadata, storage_flag
from ember.errors import BuildError, MappingError
from ember.header import MappingTable, format_mapping, merge_mappings, validate_mappings, visualize
from ember.storage import open_storage

SUMMARY = "preview merging a diff build's header over its base build's header"

GRID_COLUMNS = 128


def build_parser() -> FlagParser:
    parser = FlagParser("ember show-build-diff", SUMMARY)
    parser.add_flag(
        "from-build", help="base build ID (required)", metavar="<uuid>", type=build_id, required=True
    )
    parser.add_flag(
        "to-build", help="diff build ID (required)", metavar="<uuid>", type=build_id, required=True
    )
    storage_flag(parser)
    parser.add_bool("memfile", help="inspect the memfile artifact (the default)")
    parser.add_bool("rootfs", help="inspect the rootfs artifact")
    parser.add_bool("visualize", help="draw the base, diff and merged headers as block grids")
    return parser


def run(options: argparse.Namespace) -> int:
    file_name = file_flag(options)
    storage = open_storage(options.storage)
    base = inspect_header(storage, options.from_build, file_name)
    diff = inspect_header(storage, options.to_build, file_name)
    base_meta, diff_meta = base.header.metadata, diff.header.metadata

    print_metadata("BASE METADATA", base.source, base_meta, source_label="Storage path")
    for mapping in base.header.mappings:
        print(format_mapping(mapping, base_meta.block_size))
    try:
        validate_mappings(base.header.mappings, base_meta.size, base_meta.block_size)
    except MappingError as exc:
        raise BuildError(f"base build {base_meta.build_id} has an invalid {file_name} header: {exc}") from exc

    own = MappingTable.from_records(m for m in diff.header.mappings if m.build_id == diff_meta.build_id)
    print()
    print_metadata("DIFF METADATA", diff.source, diff_meta, source_label="Storage path")
    for mapping in own:
        print(format_mapping(mapping, base_meta.block_size))

    merged = merge_mappings(base.header.mappings, own)
    print("\nMERGED METADATA")
    print("===============")
    for mapping in merged:
        print(format_mapping(mapping, base_meta.block_size))
    try:
        validate_mappings(merged, base_meta.size, base_meta.block_size)
    except MappingError as exc:
        print(f"[VALIDATION ERROR]: {exc}", file=sys.stderr)

    if options.visualize:
        bottom = set(base.header.mappings.build_ids()) - {base_meta.base_build_id}
        grids: tuple[tuple[str, MappingTable, set[uuid.UUID], set[uuid.UUID]], ...] = (
            ("BASE", base.header.mappings, bottom, {base_meta.build_id}),
            ("DIFF", own, set(), {diff_meta.build_id}),
            ("MERGED", merged, bottom, {diff_meta.build_id}),
        )
        for title, table, bottom_group, top_group in grids:
            print(f"\n{title}")
            print(
                visualize(table, base_meta.size, base_meta.block_size, GRID_COLUMNS, bottom_group, top_group)
            )
    return 0

"""Flags and text blocks that several subcommands share, so they read and print alike."""

from __future__ import annotations

import argparse

from ember.cli.flags import FlagParser
from ember.errors import UsageError
from ember.header import Metadata
from ember.storage import MEMFILE, ROOTFS

DEFAULT_STORAGE = ".local-build"


def storage_flag(parser: FlagParser, name: str = "storage") -> None:
    parser.add_flag(
        name, help="local path, gs://bucket or s3://bucket", metavar="<path>", default=DEFAULT_STORAGE
    )


def file_flag(options: argparse.Namespace) -> str:
    """The artifact chosen by -memfile / -rootfs (memfile when neither is given)."""
    if options.memfile and options.rootfs:
        raise UsageError("-memfile and -rootfs exclude each other: pick one artifact")
    return ROOTFS if options.rootfs else MEMFILE


def print_metadata(title: str, source: str, metadata: Metadata, source_label: str = "Source") -> None:
    blocks = -(-metadata.size // metadata.block_size)
    print(title)
    print("=" * len(title))
    print(f"{source_label:<19}{source}")
    print(f"Version            {metadata.version}")
    print(f"Generation         {metadata.generation}")
    print(f"Build ID           {metadata.build_id}")
    print(f"Base build ID      {metadata.base_build_id}")
    print(f"Size               {metadata.size} B ({metadata.size // (1 << 20)} MiB)")
    print(f"Block size         {metadata.block_size} B")
    print(f"Blocks             {blocks}")

"""``ember hammer-file``: range-read benchmark of one object, with Mermaid Gantt charts of every read."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ember.cli.flags import FlagParser
from ember.storage import gantt_files, hammer, open_storage, summary_rows

SUMMARY = "benchmark 4 MiB range reads of one object (sequential, then 10 at a time)"


def build_parser() -> FlagParser:
    parser = FlagParser("ember hammer-file", SUMMARY)
    parser.add_flag(
        "bucket",
        help="bucket name (GCS), or a storage location: gs://b, s3://b, a directory",
        metavar="<bucket>",
        required=True,
    )
    parser.add_flag(
        "object", help="object key inside the bucket, e.g. <build>/memfile", metavar="<key>", required=True
    )
    return parser


def _storage_url(bucket: str) -> str:
    """The seed's -bucket is a bare GCS bucket name; any other storage location is taken as is."""
    if "://" in bucket or "/" in bucket or bucket.startswith("."):
        return bucket
    return f"gs://{bucket}"


def run(options: argparse.Namespace) -> int:
    storage = open_storage(_storage_url(options.bucket))
    report = hammer(storage, options.object)
    print(f"File size: {report.size_bytes} bytes ({report.size_bytes / 1e6:.2f} MB)")
    table = Table("Scenario", "Mean Chunk", "P50 Chunk", "Total Time", "count")
    for row in summary_rows(report):
        table.add_row(
            row.scenario,
            f"{row.mean_chunk_s * 1000:.1f}ms",
            f"{row.p50_chunk_s * 1000:.1f}ms",
            f"{row.total_s * 1000:.1f}ms",
            str(row.count),
        )
    Console(highlight=False).print(table)
    for file_name, text in gantt_files(report).items():
        Path(file_name).write_text(text)
        print(f"wrote {file_name}")
    return 0

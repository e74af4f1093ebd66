"""``ember clean-nfs-cache <path>``: evict the coldest builds from a shared chunk cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from ember.cli.flags import FlagParser, go_duration, non_negative
from ember.errors import UsageError
from ember.storage import CleanOptions, clean_cache

SUMMARY = "evict the coldest builds from a shared chunk cache (dry run by default)"


def build_parser() -> FlagParser:
    parser = FlagParser("ember clean-nfs-cache", SUMMARY + "\n\nusage: ember clean-nfs-cache [flags] <path>")
    parser.add_flag(
        "target-bytes-to-delete",
        help="bytes to free; overrides -disk-usage-target-percent",
        metavar="<bytes>",
        type=non_negative,
        default=0,
    )
    parser.add_flag(
        "disk-usage-target-percent",
        help="free space until the disk is this full (default 90)",
        metavar="<pct>",
        type=float,
        default=90.0,
    )
    parser.add_bool("dry-run", help="only report what would be deleted", default=True)
    parser.add_flag(
        "max-concurrent-stat",
        help="parallel stat calls (default 32)",
        metavar="<n>",
        type=non_negative,
        default=32,
    )
    parser.add_flag(
        "max-concurrent-scan",
        help="builds scanned in parallel (default 32)",
        metavar="<n>",
        type=non_negative,
        default=32,
    )
    parser.add_flag(
        "max-concurrent-delete",
        help="builds deleted in parallel (default 16)",
        metavar="<n>",
        type=non_negative,
        default=16,
    )
    parser.add_flag(
        "sample-min",
        help="fewest chunk files sampled per build (default 8)",
        metavar="<n>",
        type=non_negative,
        default=8,
    )
    parser.add_flag(
        "sample-pct",
        help="percent of chunk files sampled per build (default 10)",
        metavar="<pct>",
        type=float,
        default=10.0,
    )
    parser.add_flag(
        "sample-max",
        help="most chunk files sampled per build (default 64)",
        metavar="<n>",
        type=non_negative,
        default=64,
    )
    parser.add_flag(
        "build-sample-min",
        help="fewest builds sampled (default 0)",
        metavar="<n>",
        type=non_negative,
        default=0,
    )
    parser.add_flag(
        "build-sample-pct",
        help="percent of builds sampled (default 100)",
        metavar="<pct>",
        type=float,
        default=100.0,
    )
    parser.add_flag(
        "build-sample-max",
        help="most builds sampled, 0 = all (default 0)",
        metavar="<n>",
        type=non_negative,
        default=0,
    )
    parser.add_flag(
        "grace",
        help="never delete builds touched this recently (default 48h)",
        metavar="<duration>",
        type=go_duration,
        default=48 * 3600.0,
    )
    parser.add_argument("path", nargs="?", help="the chunk cache root")
    return parser


def run(options: argparse.Namespace) -> int:
    if not options.path:
        raise UsageError("missing the cache path: ember clean-nfs-cache [flags] <path>")
    if not 0 <= options.disk_usage_target_percent <= 100:
        raise UsageError(f"-disk-usage-target-percent {options.disk_usage_target_percent} must be in 0..100")
    report = clean_cache(
        Path(options.path),
        CleanOptions(
            target_bytes=options.target_bytes_to_delete,
            disk_usage_target_percent=options.disk_usage_target_percent,
            dry_run=options.dry_run,
            grace_s=options.grace,
            sample_min=options.sample_min,
            sample_pct=options.sample_pct,
            sample_max=options.sample_max,
            build_sample_min=options.build_sample_min,
            build_sample_pct=options.build_sample_pct,
            build_sample_max=options.build_sample_max,
            max_concurrent_scan=options.max_concurrent_scan,
            max_concurrent_stat=options.max_concurrent_stat,
            max_concurrent_delete=options.max_concurrent_delete,
        ),
    )
    if report.target_bytes <= 0:
        print(f"nothing to do: {report.root} is below the target usage")
        return 0
    verb = "would remove build dir (dry run)" if report.dry_run else "removed build dir"
    for usage in report.selected:
        print(f"{verb}: {usage.path} ({usage.size_bytes} bytes)")
    if report.dry_run:
        outcome = f"would free ~{report.bytes_freed_estimate} bytes from {len(report.selected)} builds"
    else:
        outcome = f"deleted {report.deleted} builds, ~{report.bytes_freed_estimate} bytes freed"
    scanned = f"scanned {report.builds_scanned} builds"
    print(f"clean complete: {scanned}, {outcome} (target {report.target_bytes} bytes)")
    return 0

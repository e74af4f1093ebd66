"""``ember orchestrator``: the node daemon serving E2B's gRPC API and the node sandbox proxy."""

from __future__ import annotations

import argparse
import logging
import os

from ember.cli.flags import FlagParser, non_negative
from ember.errors import UsageError
from ember.orchestrator.daemon import DEFAULT_GRPC_PORT, Daemon, DaemonConfig
from ember.orchestrator.manager import MAX_SANDBOXES, MAX_STARTING
from ember.orchestrator.proxy import DEFAULT_PORT as DEFAULT_PROXY_PORT
from ember.orchestrator.telemetry import configure_logging

SUMMARY = "run the node daemon: E2B's SandboxService/InfoService over gRPC, and the node sandbox proxy"


def _port(variable: str, default: int) -> int:
    text = os.environ.get(variable)
    if not text:
        return default
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"{variable}={text!r} is not a TCP port: set a number from 1 to 65535")
    return int(text)


def build_parser() -> FlagParser:
    parser = FlagParser("ember orchestrator", SUMMARY)
    parser.add_flag(
        "storage",
        help="where builds live: a directory, gs://bucket or s3://bucket (required)",
        metavar="<path>",
        required=True,
    )
    parser.add_flag(
        "grpc-port",
        help=f"gRPC port (default: GRPC_PORT, else {DEFAULT_GRPC_PORT})",
        metavar="<port>",
        type=non_negative,
    )
    parser.add_flag(
        "proxy-port",
        help=f"node sandbox proxy port, which also serves /health and /metrics "
        f"(default: PROXY_PORT, else {DEFAULT_PROXY_PORT})",
        metavar="<port>",
        type=non_negative,
    )
    parser.add_flag(
        "listen", help="address both ports listen on (default 0.0.0.0)", metavar="<addr>", default="0.0.0.0"
    )
    parser.add_flag(
        "domain",
        help="the sandbox domain: Host {port}-{id}.<domain> and sandbox.<domain> route to sandboxes",
        metavar="<domain>",
    )
    parser.add_flag("node-id", help="this node's id (default: the host name)", metavar="<id>", default="")
    parser.add_flag(
        "max-sandboxes",
        help=f"sandboxes this node runs at once (default {MAX_SANDBOXES})",
        metavar="<n>",
        type=non_negative,
        default=MAX_SANDBOXES,
    )
    parser.add_flag(
        "max-starting",
        help=f"sandboxes this node starts at once (default {MAX_STARTING}); more fresh creates are refused",
        metavar="<n>",
        type=non_negative,
        default=MAX_STARTING,
    )
    parser.add_flag(
        "public-url",
        help="how the control plane and SDKs reach this node's proxy port, for template file uploads "
        "(default http://<listen address or host name>:<proxy port>)",
        metavar="<url>",
        default="",
    )
    parser.add_flag(
        "cache-disk-usage-target-percent",
        help="with gs:// or s3:// storage: evict the coldest builds from the chunk cache "
        "(SNAPSHOT_CACHE_DIR) while its file system is fuller than this (default 90)",
        metavar="<pct>",
        type=float,
        default=90.0,
    )
    parser.add_bool("v", help="verbose: debug logging")
    return parser


def run(options: argparse.Namespace) -> int:
    configure_logging(logging.DEBUG if options.v else logging.INFO)
    if options.max_sandboxes < 1 or options.max_starting < 1:
        raise UsageError("-max-sandboxes and -max-starting must be at least 1")
    if not 0 < options.cache_disk_usage_target_percent <= 100:
        raise UsageError("-cache-disk-usage-target-percent must be above 0 and at most 100")
    if options.public_url and not options.public_url.startswith(("http://", "https://")):
        raise UsageError(f"-public-url {options.public_url!r} must be an http:// or https:// URL")
    config = DaemonConfig(
        storage=options.storage,
        listen=options.listen,
        grpc_port=options.grpc_port
        if options.grpc_port is not None
        else _port("GRPC_PORT", DEFAULT_GRPC_PORT),
        proxy_port=options.proxy_port
        if options.proxy_port is not None
        else _port("PROXY_PORT", DEFAULT_PROXY_PORT),
        domain=options.domain,
        node_id=options.node_id,
        max_sandboxes=options.max_sandboxes,
        max_starting=options.max_starting,
        public_url=options.public_url,
        cache_disk_target_percent=options.cache_disk_usage_target_percent,
    )
    daemon = Daemon(config)
    daemon.start()
    daemon.wait()
    return 0

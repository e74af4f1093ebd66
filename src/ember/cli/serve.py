"""``ember serve``: the orchestrator, the REST API and the edge proxy on one machine (a self-hosted E2B)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from ember.cli.flags import FlagParser, non_negative
from ember.serve import ServeConfig, serve

SUMMARY = "run a self-hosted E2B on this machine: node daemon, REST API and edge proxy; prints the client env"
DEFAULT_STORAGE = "/var/lib/ember"


def build_parser() -> FlagParser:
    parser = FlagParser("ember serve", SUMMARY)
    parser.add_flag(
        "storage",
        help=f"directory for builds, the database and the API key (default {DEFAULT_STORAGE})",
        metavar="<dir>",
        default=DEFAULT_STORAGE,
    )
    parser.add_flag(
        "db", help="database URL (default sqlite:// in the storage directory)", metavar="<url>", default=""
    )
    parser.add_flag(
        "listen",
        help="address every port listens on (default 127.0.0.1)",
        metavar="<addr>",
        default="127.0.0.1",
    )
    for name, default, what in (
        ("api-port", 3000, "REST API"),
        ("edge-port", 3002, "edge proxy (E2B_SANDBOX_URL)"),
        ("grpc-port", 5008, "orchestrator gRPC"),
        ("proxy-port", 5007, "node sandbox proxy"),
        ("internal-grpc-port", 5009, "auto-resume gRPC"),
    ):
        parser.add_flag(
            name,
            help=f"{what} port (default {default})",
            metavar="<port>",
            type=non_negative,
            default=default,
        )
    parser.add_flag(
        "domain",
        help="sandbox domain: {port}-{id}.<domain> routes to a sandbox's port (default localhost)",
        metavar="<domain>",
        default="localhost",
    )
    parser.add_bool("v", help="verbose: debug logging")
    return parser


def run(options: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if options.v else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = ServeConfig(
        storage=Path(options.storage),
        db_url=options.db or None,
        listen=options.listen,
        api_port=options.api_port,
        edge_port=options.edge_port,
        grpc_port=options.grpc_port,
        proxy_port=options.proxy_port,
        internal_grpc_port=options.internal_grpc_port,
        domain=options.domain,
    )
    asyncio.run(serve(config))
    return 0

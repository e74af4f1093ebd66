"""``ember api``: the control plane E2B's SDKs talk to (REST API, edge proxy, auto-resume gRPC)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from ember.api import DEFAULT_DB_URL, ApiConfig, ApiServer, TemplateRegistration
from ember.api.app import DEFAULT_API_PORT
from ember.api.edge import DEFAULT_EDGE_PORT
from ember.api.gc import DEFAULT_GC_GRACE_S
from ember.api.nodes import DEFAULT_NODE_PROXY_PORT, DEFAULT_ORCHESTRATOR
from ember.api.resume import DEFAULT_INTERNAL_GRPC_PORT
from ember.cli.flags import FlagParser, go_duration, non_negative
from ember.errors import UsageError

SUMMARY = "run the control plane: E2B's REST API, the edge proxy and auto-resume, over orchestrator nodes"


class _Flags(FlagParser):
    def add_repeated(self, name: str, *, help: str, metavar: str) -> None:
        """A value flag that may be given several times; the values collect in a list."""
        spellings = (f"-{name}", f"--{name}")
        self._spellings.update(spellings)
        self._value_spellings.update(spellings)
        self.add_argument(
            *spellings, dest=name.replace("-", "_"), metavar=metavar, action="append", help=help
        )


def build_parser() -> FlagParser:
    parser = _Flags("ember api", SUMMARY)
    parser.add_flag(
        "port", help=f"REST API port (default {DEFAULT_API_PORT})", metavar="<port>", type=non_negative
    )
    parser.add_flag(
        "listen", help="address every port listens on (default 0.0.0.0)", metavar="<addr>", default="0.0.0.0"
    )
    parser.add_flag(
        "db",
        help=f"database: sqlite://<path> or postgresql://... (default {DEFAULT_DB_URL})",
        metavar="<url>",
        default=DEFAULT_DB_URL,
    )
    parser.add_repeated(
        "orchestrator",
        help=f"an orchestrator node's gRPC address; repeat for each node (default {DEFAULT_ORCHESTRATOR})",
        metavar="<host:port>",
    )
    parser.add_flag(
        "domain",
        help="the sandbox domain: answers name it, and the edge routes {port}-{id}.<domain>",
        metavar="<domain>",
    )
    parser.add_flag(
        "node-proxy-port",
        help=f"the nodes' sandbox proxy port (default {DEFAULT_NODE_PROXY_PORT})",
        metavar="<port>",
        type=non_negative,
        default=DEFAULT_NODE_PROXY_PORT,
    )
    parser.add_flag(
        "edge-port",
        help=f"edge proxy port (default {DEFAULT_EDGE_PORT}; 0 disables the edge proxy)",
        metavar="<port>",
        type=non_negative,
        default=DEFAULT_EDGE_PORT,
    )
    parser.add_flag(
        "internal-grpc-port",
        help=f"port of proxy.SandboxService/ResumeSandbox for an edge proxy in another process "
        f"(default {DEFAULT_INTERNAL_GRPC_PORT}; 0 disables it)",
        metavar="<port>",
        type=non_negative,
        default=DEFAULT_INTERNAL_GRPC_PORT,
    )
    parser.add_repeated(
        "template",
        help="name a build as a template: alias=<build-id>[,vcpu=N][,memory=MB][,disk=MB][,envd=X.Y.Z] "
        "(defaults vcpu=2, memory=512, disk=1024, envd=0.5.4); repeat for each",
        metavar="<spec>",
    )
    parser.add_flag(
        "max-concurrent-sandboxes",
        help="set the team's limit of sandboxes at once (kept in the database; initially 20)",
        metavar="<n>",
        type=non_negative,
    )
    parser.add_flag(
        "max-length-hours",
        help="set the team's longest sandbox lifetime in hours (kept in the database; initially 24)",
        metavar="<hours>",
        type=non_negative,
    )
    parser.add_flag(
        "storage",
        help="the build storage the nodes use (a directory, gs://bucket or s3://bucket): deletes "
        "garbage-collect the builds they release; without it deletes only drop database rows",
        metavar="<url>",
    )
    parser.add_flag(
        "gc-grace",
        help="gc never deletes a build whose folder changed this recently (default 24h)",
        metavar="<duration>",
        type=go_duration,
        default=DEFAULT_GC_GRACE_S,
    )
    parser.add_bool("v", help="verbose: debug logging")
    return parser


def _config(options: argparse.Namespace) -> ApiConfig:
    for name in ("max_concurrent_sandboxes", "max_length_hours"):
        if getattr(options, name) == 0:
            raise UsageError(f"-{name.replace('_', '-')} must be at least 1")
    return ApiConfig(
        db_url=options.db,
        listen=options.listen,
        port=DEFAULT_API_PORT if options.port is None else options.port,
        orchestrators=tuple(options.orchestrator or (DEFAULT_ORCHESTRATOR,)),
        domain=options.domain or None,
        node_proxy_port=options.node_proxy_port,
        edge_port=options.edge_port or None,
        internal_grpc_port=options.internal_grpc_port or None,
        templates=tuple(TemplateRegistration.parse(text) for text in options.template or ()),
        max_concurrent_sandboxes=options.max_concurrent_sandboxes,
        max_length_hours=options.max_length_hours,
        storage_url=options.storage or None,
        gc_grace_s=options.gc_grace,
    )


def run(options: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if options.v else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = _config(options)
    asyncio.run(_serve(config))
    return 0


async def _serve(config: ApiConfig) -> None:
    server = ApiServer(config)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        _print_addresses(server)
        await stopping.wait()
        print("ember api: stopping", flush=True)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop()
    print("ember api: stopped", flush=True)


def _print_addresses(server: ApiServer) -> None:
    config = server.config
    lines = []
    if server.api_address is not None:
        lines.append(f"REST API on http://{_joined(server.api_address)}")
    if server.edge_address is not None:
        lines.append(f"edge proxy on http://{_joined(server.edge_address)}")
    if server.grpc_address is not None:
        lines.append(f"internal gRPC (proxy.SandboxService/ResumeSandbox) on {_joined(server.grpc_address)}")
    lines.append(f"database {_without_password(config.db_url)}")
    lines.append(f"nodes {', '.join(config.orchestrators)} (sandbox proxy port {config.node_proxy_port})")
    for line in lines:
        print(f"ember api: {line}", flush=True)


def _joined(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, place = rest.rpartition("@")
        user = credentials.partition(":")[0]
        rest = f"{user}@{place}"
    return f"{scheme}{sep}{rest}"

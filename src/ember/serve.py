"""``ember serve``: a self-hosted E2B on one machine, in one process tree.

::

    orchestrator   the node daemon (``ember.orchestrator.daemon``): gRPC :5008, sandbox proxy :5007
    control plane  the REST API :3000, the edge proxy :3002, auto-resume gRPC :5009 (``ember.api``)
    storage        <storage>/templates/{build}/...   builds (the seed's local layout)
                   <storage>/api.sqlite3             the control plane's database (or -db)
                   <storage>/serve-api-key           the API key ``serve`` made on first start (0600)

On the first start the ``base`` template is built (create-build of the default Debian
template, with progress on stderr) and an API key is made. Then the environment a client
needs goes to stdout, one ``NAME=value`` line each, and nothing else does, so a shell can
``export`` them. SIGTERM (or Ctrl+C) stops the control plane, then the node: running
sandboxes are killed, paused ones stay in the database and storage, and the next start
finds them again (``Sandbox.connect`` resumes them).

Everything listens on ``listen`` (default 127.0.0.1): a single-machine setup reachable from
this machine only, unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ember.api import ApiConfig, ApiServer, Store, TemplateRegistration, open_store
from ember.api.auth import add_api_key, hash_api_key
from ember.envd import ENVD_VERSION
from ember.errors import UsageError
from ember.orchestrator.daemon import Daemon, DaemonConfig
from ember.sandbox import CreateOptions, SandboxEvent, create_build
from ember.storage.paths import METADATA, BuildPaths

_log = logging.getLogger(__name__)

BASE_TEMPLATE = "base"
API_KEY_FILE = "serve-api-key"
DB_FILE = "api.sqlite3"


@dataclass(frozen=True)
class ServeConfig:
    """Where ``serve`` keeps its state and which ports it opens (the originals' defaults)."""

    storage: Path
    db_url: str | None = None
    listen: str = "127.0.0.1"
    api_port: int = 3000
    edge_port: int = 3002
    grpc_port: int = 5008
    proxy_port: int = 5007
    internal_grpc_port: int = 5009
    domain: str = "localhost"
    base_vcpu: int = 2
    base_memory_mb: int = 512
    base_disk_mb: int = 1024

    @property
    def database(self) -> str:
        return self.db_url or f"sqlite://{self.storage.resolve() / DB_FILE}"


class LocalStack:
    """The orchestrator and the control plane of one machine (see the module docstring)."""

    def __init__(self, config: ServeConfig, progress: TextIO = sys.stderr) -> None:
        self.config = config
        self.progress = progress
        self.daemon: Daemon | None = None
        self.api: ApiServer | None = None
        self.api_key = ""

    def _say(self, line: str) -> None:
        print(line, file=self.progress, flush=True)

    async def start(self) -> None:
        """Node first (it reclaims what a killed run left), then the base template, then the API."""
        config = self.config
        try:
            config.storage.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise UsageError(f"-storage {config.storage}: cannot create it ({exc})") from exc
        daemon = self.daemon = Daemon(
            DaemonConfig(
                storage=str(config.storage),
                listen=config.listen,
                grpc_port=config.grpc_port,
                proxy_port=config.proxy_port,
                domain=config.domain,
            )
        )
        await asyncio.to_thread(daemon.start)
        store = await open_store(config.database)
        try:
            build = await self._base_template(store)
            self.api_key = await self._api_key(store)
        finally:
            await store.close()
        api = self.api = ApiServer(
            ApiConfig(
                db_url=config.database,
                listen=config.listen,
                port=config.api_port,
                orchestrators=(f"{config.listen}:{daemon.grpc_address[1] if daemon.grpc_address else 0}",),
                domain=config.domain,
                node_proxy_port=daemon.proxy_address[1] if daemon.proxy_address else config.proxy_port,
                edge_port=config.edge_port,
                internal_grpc_port=config.internal_grpc_port,
                templates=(build,) if build is not None else (),
                storage_url=str(config.storage),
            )
        )
        await api.start()

    async def _base_template(self, store: Store) -> TemplateRegistration | None:
        """The ``base`` template, built now if the database has none (None: it exists).

        A database whose ``base`` names a build the storage lacks (a storage emptied or
        replaced under a kept database) gets a new build: creates from it would all fail.
        """
        assert self.daemon is not None and self.daemon.node is not None
        node = self.daemon.node
        found = await store.find_template(BASE_TEMPLATE)
        if found is not None:
            if found.build_id is not None:
                metadata = BuildPaths(found.build_id).key(METADATA)
                if await asyncio.to_thread(node.storage.exists, metadata):
                    return None
            self._say(
                f"The {BASE_TEMPLATE!r} template's build {found.build_id} is not in {node.storage.url}:"
                " building it again"
            )
        build = uuid.uuid4()
        self._say(
            f"Building the {BASE_TEMPLATE!r} template (build {build}); the first time takes a few minutes"
        )
        previous = node.events

        def show(event: SandboxEvent) -> None:
            previous(event)
            if event.sandbox_id == "create":
                self._say(f"  {event.message}")

        node.events = show
        config = self.config
        try:
            await asyncio.to_thread(
                create_build,
                node,
                CreateOptions(
                    to_build=build,
                    vcpu=config.base_vcpu,
                    memory_mb=config.base_memory_mb,
                    disk_mb=config.base_disk_mb,
                    hugepages=False,
                ),
            )
        finally:
            node.events = previous
        self._say(f"Template {BASE_TEMPLATE!r} is build {build}")
        return TemplateRegistration(
            BASE_TEMPLATE,
            str(build),
            vcpu=config.base_vcpu,
            ram_mb=config.base_memory_mb,
            disk_mb=config.base_disk_mb,
            envd_version=ENVD_VERSION,
        )

    async def _api_key(self, store: Store) -> str:
        """The key made on the first start, kept (readable by its owner only) so every start can print it.

        The file outlives a database it was made for (another ``-db``, a database recreated):
        a key the database does not know is added to it, so the printed key always works.
        """
        path = self.config.storage / API_KEY_FILE
        if path.is_file():
            key = path.read_text().strip()
            if await store.team_for_api_key(hash_api_key(key)) is None:
                await add_api_key(store, "ember serve", key)
            return key
        key = await add_api_key(store, "ember serve")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as target:
            target.write(key + "\n")
        return key

    def environment(self) -> dict[str, str]:
        """What a client exports to reach this stack with E2B's SDKs."""
        api = self.api
        assert api is not None and api.api_address is not None
        host = self.config.listen if self.config.listen not in ("0.0.0.0", "::") else "127.0.0.1"
        edge = api.edge_address[1] if api.edge_address is not None else self.config.edge_port
        return {
            "E2B_API_URL": f"http://{host}:{api.api_address[1]}",
            "E2B_SANDBOX_URL": f"http://{host}:{edge}",
            "E2B_API_KEY": self.api_key,
            "E2B_DOMAIN": self.config.domain,
        }

    async def stop(self) -> None:
        """The control plane first (no new work), then the node (kills what still runs)."""
        if self.api is not None:
            await self.api.stop()
        if self.daemon is not None:
            await asyncio.to_thread(self.daemon.stop)


async def serve(config: ServeConfig, output: TextIO = sys.stdout) -> None:
    """Run the stack until SIGTERM or SIGINT; the client environment goes to ``output``."""
    stack = LocalStack(config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    starting = asyncio.create_task(stack.start())
    stop_wait = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a failed start raises here
            for name, value in stack.environment().items():
                print(f"{name}={value}", file=output, flush=True)
            await stop_wait
        _log.info("stopping")
    finally:
        stop_wait.cancel()
        # Stopping the node kills a sandbox a start may still be building on, which ends that start.
        await stack.stop()
        if not starting.done():
            with contextlib.suppress(Exception):
                await starting

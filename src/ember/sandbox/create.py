"""create-build: boot a template, run its start command, wait until ready, pause it into a build.

The phases, each timed and reported as a ``phase`` event::

    claim     the target build is claimed first: an existing build is refused before any work
    rootfs    the base the sandbox's disk reads: the template image, stored once as an image
              layer build (reused by every later create-build of the same image), or the
              rootfs of ``from_build``
    boot      a cold boot of that disk (``Sandbox.boot``): slot, NBD disk, RAM file, VMM, envd
    start     the start command (left running), then the ready command until it succeeds
    pause     ``Sandbox.pause``: memfile = non-zero RAM pages over an empty device, rootfs =
              the overlay's diff, metadata.json last

Whatever happens, the sandbox is gone when ``create_build`` returns or raises, and no build
is visible unless it is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ember.build import BuildFile, Start, TemplateInfo, TemplateMetadata
from ember.envd.client import EnvdClient
from ember.envd.records import ProcessResult
from ember.errors import BuildError, EmberError, GuestError, UsageError
from ember.guest import cache_dir, open_kernel, provision_kernel
from ember.header import HUGEPAGE_SIZE, PAGE_SIZE, Header
from ember.memory.hugepages import require_hugepages
from ember.sandbox.cleanup import create_workspace, remove_workspace
from ember.sandbox.node import Node
from ember.sandbox.records import SandboxEvent
from ember.sandbox.rootfs import store_image_build
from ember.sandbox.sandbox import BootOptions, Sandbox
from ember.sandbox.template import template_image
from ember.storage import ROOTFS, BuildPaths, Storage

READY_POLL_INTERVAL_S = 0.5
ENVD_BOOT_TIMEOUT_S = 120.0
IMAGE_LAYER_NAMESPACE = uuid.UUID("6f1b8d4e-6a0c-4d55-9d3e-3a7c2f0e9b11")
CREATOR = "create"


@dataclass(frozen=True)
class CreateOptions:
    """What to build: the disk's source, the machine, and the commands a template runs."""

    to_build: uuid.UUID
    from_build: uuid.UUID | None = None
    image: Path | None = None
    kernel: str | None = None
    vcpu: int = 2
    memory_mb: int = 1024
    disk_mb: int = 1024
    hugepages: bool = True
    start_cmd: str = ""
    ready_cmd: str = ""
    timeout_s: float = 300.0


@dataclass(frozen=True)
class CreateReport:
    build_id: uuid.UUID
    kernel_version: str
    vmm_version: str
    memfile_header: Header | None
    rootfs_header: Header
    phases_s: dict[str, float] = field(default_factory=dict)


def check_options(options: CreateOptions) -> None:
    """Refuse a machine that cannot be built, before anything is claimed or booted."""
    if options.vcpu < 1 or options.memory_mb < 64 or options.disk_mb < 64:
        raise UsageError("vcpu must be >= 1, memory and disk >= 64 (MB)")
    if options.timeout_s <= 0:
        raise UsageError(f"the ready timeout must be positive, not {options.timeout_s:g} s")
    block = HUGEPAGE_SIZE if options.hugepages else PAGE_SIZE
    if (options.memory_mb << 20) % block:
        raise UsageError(f"memory {options.memory_mb} MB is not a whole number of {block >> 10} KiB pages")


class _Phases:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.seconds[name] = time.monotonic() - started
        self.node.emit(
            SandboxEvent(
                CREATOR,
                "phase",
                f"{name}: {self.seconds[name]:.2f} s",
                {"phase": name, "seconds": self.seconds[name]},
            )
        )


def create_build(node: Node, options: CreateOptions) -> CreateReport:
    """Run every phase; raises an ember error naming what failed."""
    check_options(options)
    if options.hugepages:
        require_hugepages(options.memory_mb << 20)
    phases = _Phases(node)
    if options.kernel is not None:
        _require_kernel(node, options.kernel)
    with phases.phase("claim"):
        node.claim(options.to_build, "create-build")
    try:
        return _build(node, options, phases)
    except BaseException:
        node.release_claim(options.to_build)
        raise


def _require_kernel(node: Node, version: str) -> None:
    """A -kernel this host cannot boot is refused before anything is claimed or stored."""
    try:
        open_kernel(node.env.host_kernels_dir, version, node.env.target_arch)
        return
    except GuestError:
        provisioned = provision_kernel(node.env.host_kernels_dir, node.env.target_arch).version
    if provisioned != version:
        raise UsageError(
            f"kernel {version} is not available: this host provisions {provisioned} "
            "from Debian's cloud kernel package; omit -kernel or pass that version"
        )


def _build(node: Node, options: CreateOptions, phases: _Phases) -> CreateReport:
    with phases.phase("rootfs"):
        if options.from_build is not None:
            base = options.from_build
            BuildFile.open(node.storage, base, ROOTFS)  # a clear error now if it is missing
        else:
            base = _image_layer(node, options)
    metadata = TemplateMetadata(
        version=2,
        template=TemplateInfo("", options.kernel or "", ""),
        start=Start(options.start_cmd, options.ready_cmd) if options.start_cmd or options.ready_cmd else None,
    )
    boot = BootOptions(
        base_rootfs=base,
        vcpu_count=options.vcpu,
        memory_mib=options.memory_mb,
        hugepages=options.hugepages,
        metadata=metadata,
        kernel_version=options.kernel,
        envd_timeout_s=ENVD_BOOT_TIMEOUT_S,
    )
    with phases.phase("boot"):
        sandbox = Sandbox.boot(node, boot)
    with sandbox:
        with phases.phase("start"):
            start_and_wait_ready(sandbox.envd, options.start_cmd, options.ready_cmd, options.timeout_s, node)
            sandbox.check()
        with phases.phase("pause"):
            result = sandbox.pause(options.to_build, claimed=True)
    template = result.metadata.template
    return CreateReport(
        options.to_build,
        template.kernel_version,
        template.firecracker_version,
        result.memfile_header,
        result.rootfs_header,
        phases.seconds,
    )


def _image_layer(node: Node, options: CreateOptions) -> uuid.UUID:
    """The template image stored as a first-layer build, named by its content so it is stored once."""
    workspace = create_workspace(node.env, "create-image")
    try:
        image = template_image(
            options.image, options.disk_mb, node.env, cache_dir(), workspace.work_dir, _progress(node)
        )
        digest = hashlib.sha256()
        with image.open("rb") as source:
            for chunk in iter(lambda: source.read(8 << 20), b""):
                digest.update(chunk)
        layer = uuid.uuid5(IMAGE_LAYER_NAMESPACE, digest.hexdigest())
        storage: Storage = node.storage
        if storage.exists(BuildPaths(layer).metadata):
            node.emit(
                SandboxEvent(CREATOR, "image-layer", f"image layer {layer} exists", {"build_id": str(layer)})
            )
            return layer
        node.emit(
            SandboxEvent(CREATOR, "image-layer", f"storing image layer {layer}", {"build_id": str(layer)})
        )
        metadata = TemplateMetadata(
            version=2, template=TemplateInfo(build_id=str(layer)), from_image=str(image)
        )
        store_image_build(image, storage, layer, metadata, workspace.work_dir)
        return layer
    finally:
        remove_workspace(workspace)


def _progress(node: Node) -> Callable[[str], None]:
    def say(line: str) -> None:
        node.emit(SandboxEvent(CREATOR, "progress", line))

    return say


@dataclass(frozen=True)
class CommandContext:
    """Who runs a template's commands, where, with which environment (its metadata's context)."""

    user: str = "root"
    cwd: str | None = None
    envs: dict[str, str] = field(default_factory=dict)


def start_and_wait_ready(
    client: EnvdClient,
    start_cmd: str,
    ready_cmd: str,
    timeout_s: float,
    node: Node,
    context: CommandContext | None = None,
) -> None:
    """The start command left running, then the ready command until it succeeds (a template's last phase).

    A start command that exits with an error before the ready command succeeds fails it at
    once, with its last lines of output; a ready command that never succeeds fails it after
    ``timeout_s`` with its own.
    """
    context = context or CommandContext()
    start = _StartCommand(client, start_cmd, node, context) if start_cmd else None
    if ready_cmd:
        _wait_ready(client, ready_cmd, timeout_s, start, node, context)
    elif start is not None:
        start.check()


class _StartCommand:
    """The template's start command, left running; a watcher notices if it fails before ready."""

    def __init__(self, client: EnvdClient, cmd: str, node: Node, context: CommandContext) -> None:
        node.emit(SandboxEvent(CREATOR, "start-command", f"start command: {cmd}"))
        self.cmd = cmd
        self._handle = client.start(
            cmd, user=context.user, cwd=context.cwd, envs=context.envs, timeout_s=24 * 3600
        )
        self._result: ProcessResult | None = None
        self._watcher = threading.Thread(target=self._watch, name="start-cmd", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        with contextlib.suppress(EmberError):  # the stream ends with the VM; only an early exit matters
            self._result = self._handle.wait()

    def check(self) -> None:
        """Raise if the start command has already exited with a failure."""
        result = self._result
        if result is not None and result.exit_code != 0:
            tail = " / ".join(result.stderr.decode(errors="replace").strip().splitlines()[-3:])
            raise BuildError(
                f"start command {self.cmd!r} exited with code {result.exit_code}: {tail or 'no output'}"
            )


def _wait_ready(
    client: EnvdClient,
    ready_cmd: str,
    timeout_s: float,
    start: _StartCommand | None,
    node: Node,
    context: CommandContext,
) -> None:
    node.emit(SandboxEvent(CREATOR, "ready-command", f"waiting for ready command: {ready_cmd}"))
    deadline = time.monotonic() + timeout_s
    attempts = 0
    while True:
        attempts += 1
        remaining = max(1.0, deadline - time.monotonic())
        result = client.run(
            ready_cmd, user=context.user, cwd=context.cwd, envs=context.envs, timeout_s=min(30.0, remaining)
        )
        if result.exit_code == 0:
            node.emit(
                SandboxEvent(CREATOR, "ready", f"ready after {attempts} check(s)", {"attempts": attempts})
            )
            return
        if start is not None:
            start.check()
        if time.monotonic() >= deadline:
            tail = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()[-2:]
            raise BuildError(
                f"ready command {ready_cmd!r} did not succeed within {timeout_s / 60:g} min "
                f"({attempts} checks, last exit code {result.exit_code}: {' / '.join(tail) or 'no output'}); "
                "fix the command or raise the timeout"
            )
        time.sleep(READY_POLL_INTERVAL_S)

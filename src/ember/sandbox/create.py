"""create-build: boot a template, run its start command, wait until ready, snapshot it into a build.

The phases, each timed and reported through ``progress``::

    kernel    provision the guest kernel and initramfs (cached outside the repo)
    rootfs    the base the sandbox's disk reads: the template image, stored once as an image
              layer build (reused by every later create-build of the same image), or the
              rootfs of -from-build
    boot      network slot, NBD-served copy-on-write disk, guest RAM in a file, VMM cold boot
    envd      wait for the guest agent, /init
    start     the start command (left running), then the ready command until it succeeds
    snapshot  sync the guest's disk, pause, save device state (the snapfile)
    export    memfile = non-zero RAM pages over an empty device; rootfs = the overlay's diff
    upload    data objects and headers, then metadata.json last

Whatever happens, the VM, the NBD server, the network slot and the scratch files are gone
when ``create_build`` returns or raises, and no build is visible unless it is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ember.block import export_diff
from ember.build import BuildArtifacts, BuildFile, Start, TemplateInfo, TemplateMetadata, upload_build
from ember.envd.client import EnvdClient
from ember.envd.records import ProcessResult
from ember.environment import Environment
from ember.errors import BuildError, EmberError, UsageError
from ember.guest import build_initramfs, cache_dir, provision_kernel
from ember.header import HUGEPAGE_SIZE, PAGE_SIZE, Header
from ember.memory import export_memory
from ember.memory.hugepages import hugetlbfs, require_hugepages
from ember.sandbox.guest_agent import GuestAgent
from ember.sandbox.rootfs import ServedRootfs, store_image_build
from ember.sandbox.template import template_image
from ember.storage import MEMFILE, ROOTFS, SNAPFILE, BuildPaths, Storage, open_storage
from ember.vmm.kernel_args import kernel_args
from ember.vmm.qemu import DriveConfig, MachineConfig, MemoryFileConfig, QemuVm, qemu_version

READY_POLL_INTERVAL_S = 0.5
ENVD_BOOT_TIMEOUT_S = 120.0
IMAGE_LAYER_NAMESPACE = uuid.UUID("6f1b8d4e-6a0c-4d55-9d3e-3a7c2f0e9b11")


@dataclass(frozen=True)
class CreateOptions:
    to_build: uuid.UUID
    storage: str
    from_build: uuid.UUID | None = None
    template: str = "local-template"
    image: Path | None = None
    kernel: str | None = None
    vcpu: int = 2
    memory_mb: int = 1024
    disk_mb: int = 1024
    hugepages: bool = True
    start_cmd: str = ""
    ready_cmd: str = ""
    timeout_s: float = 300.0
    sandbox_dir: Path | None = None


@dataclass(frozen=True)
class CreateReport:
    build_id: uuid.UUID
    kernel_version: str
    vmm_version: str
    memfile_header: Header
    rootfs_header: Header
    phases_s: dict[str, float] = field(default_factory=dict)


Progress = Callable[[str], None]


def _phase(
    report: dict[str, float], name: str, progress: Progress
) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def timed() -> Iterator[None]:
        started = time.monotonic()
        yield
        report[name] = time.monotonic() - started
        progress(f"  {name}: {report[name]:.2f} s")

    return timed()


def _check_options(options: CreateOptions) -> None:
    if options.vcpu < 1 or options.memory_mb < 64 or options.disk_mb < 64:
        raise UsageError("-vcpu must be >= 1, -memory and -disk >= 64 (MB)")
    block = HUGEPAGE_SIZE if options.hugepages else PAGE_SIZE
    if (options.memory_mb << 20) % block:
        raise UsageError(f"-memory {options.memory_mb} is not a whole number of {block >> 10} KiB pages")


def _image_layer(
    storage: Storage, image: Path, env: Environment, scratch: Path, progress: Progress
) -> tuple[uuid.UUID, Header]:
    """The image stored as a first-layer build, named by its content so it is stored once."""
    digest = hashlib.sha256()
    with image.open("rb") as source:
        for chunk in iter(lambda: source.read(8 << 20), b""):
            digest.update(chunk)
    layer = uuid.uuid5(IMAGE_LAYER_NAMESPACE, digest.hexdigest())
    paths = BuildPaths(layer)
    if storage.exists(paths.metadata):
        progress(f"✓ Image layer {layer} exists")
        return layer, BuildFile.open(storage, layer, ROOTFS).header
    progress(f"⬆ Storing image layer {layer}")
    metadata = TemplateMetadata(version=2, template=TemplateInfo(build_id=str(layer)), from_image=str(image))
    return layer, store_image_build(image, storage, layer, metadata, scratch)


def create_build(options: CreateOptions, progress: Progress = print) -> CreateReport:
    """Run every phase; raises an EmberError naming the phase that failed."""
    _check_options(options)
    if options.hugepages:
        require_hugepages(options.memory_mb << 20)
    env = Environment.resolve(options.storage)
    storage = open_storage(options.storage)
    paths = BuildPaths(options.to_build)
    if storage.exists(paths.metadata):
        raise UsageError(f"build {options.to_build} already exists in {storage.url}: pick a new -to-build")
    phases: dict[str, float] = {}
    block_size = HUGEPAGE_SIZE if options.hugepages else PAGE_SIZE
    progress(f"✓ Storage: {storage.url} ({'local' if env.local_mode else 'remote'})")
    progress(f"Building with page size: {'2MB (hugepages)' if options.hugepages else '4KB (standard)'}")

    with _phase(phases, "kernel", progress):
        kernel = provision_kernel(env.host_kernels_dir, env.target_arch)
        if options.kernel and options.kernel != kernel.version:
            raise UsageError(
                f"kernel {options.kernel} is not available: this host provisions {kernel.version} "
                "from Debian's cloud kernel package; omit -kernel or pass that version"
            )
        initramfs = build_initramfs(kernel)
        progress(f"✓ Kernel {kernel.version} ({kernel.directory})")

    work_root = env.orchestrator_base_path / "sandbox"
    work_root.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="create-", dir=work_root)))
        with _phase(phases, "rootfs", progress):
            if options.from_build is not None:
                progress(f"Building from: {options.from_build}")
                base = BuildFile.open(storage, options.from_build, ROOTFS)
            else:
                image = template_image(options.image, options.disk_mb, env, cache_dir(), scratch, progress)
                layer, _ = _image_layer(storage, image, env, scratch, progress)
                base = BuildFile.open(storage, layer, ROOTFS)
            rootfs = stack.enter_context(
                ServedRootfs(base, scratch, f"rootfs-{options.to_build}", base.block_size)
            )

        with _phase(phases, "boot", progress):
            agent = stack.enter_context(GuestAgent.network(progress))
            memory_dir = scratch
            if options.hugepages:
                memory_dir = stack.enter_context(hugetlbfs(scratch, options.memory_mb << 20))
            memory_path = memory_dir / "memory"
            config = MachineConfig(
                kernel_path=kernel.vmlinuz_path,
                initrd_path=initramfs,
                cmdline=kernel_args(ip=agent.ip_arg),
                memory_mib=options.memory_mb,
                vcpu_count=options.vcpu,
                drives=(DriveConfig(rootfs.url),),
                memory_file=MemoryFileConfig(memory_path, shared=True),
                nics=agent.nics,
                netns=agent.netns,
                name=f"create-{options.to_build}",
            )
            vm = stack.enter_context(QemuVm(config, scratch / "vm"))
            vm.boot()

        with _phase(phases, "envd", progress):
            client = agent.connect(timeout_s=ENVD_BOOT_TIMEOUT_S, vm=vm)

        with _phase(phases, "start", progress):
            start = _StartCommand(client, options.start_cmd, progress) if options.start_cmd else None
            if options.ready_cmd:
                _wait_ready(client, options, start, progress)
            elif start is not None:
                start.check()

        with _phase(phases, "snapshot", progress):
            client.run_program("/bin/sync", timeout_s=60)
            vm.pause()
            snapshot = vm.snapshot(scratch / SNAPFILE)
            vm.stop()

        with _phase(phases, "export", progress):
            memfile_header = export_memory(
                snapshot.memory_path, options.memory_mb << 20, block_size, options.to_build, scratch / MEMFILE
            )
            rootfs_header = export_diff(rootfs.overlay, base.header, options.to_build, scratch / ROOTFS)

        with _phase(phases, "upload", progress):
            vmm_version = qemu_version()
            metadata = TemplateMetadata(
                version=2,
                template=TemplateInfo(str(options.to_build), kernel.version, vmm_version),
                start=Start(options.start_cmd, options.ready_cmd)
                if options.start_cmd or options.ready_cmd
                else None,
            )
            upload_build(
                storage,
                BuildArtifacts(
                    build_id=options.to_build,
                    metadata=metadata,
                    rootfs_header=rootfs_header,
                    rootfs_data=scratch / ROOTFS,
                    memfile_header=memfile_header,
                    memfile_data=scratch / MEMFILE,
                    snapfile=snapshot.state_path,
                ),
                consume_files=True,
            )
    return CreateReport(options.to_build, kernel.version, vmm_version, memfile_header, rootfs_header, phases)


class _StartCommand:
    """The template's start command, left running; a watcher notices if it fails before ready."""

    def __init__(self, client: EnvdClient, cmd: str, progress: Progress) -> None:
        progress(f"▶ Start command: {cmd}")
        self.cmd = cmd
        self._handle = client.start(cmd, timeout_s=24 * 3600)
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
    client: EnvdClient, options: CreateOptions, start: _StartCommand | None, progress: Progress
) -> None:
    progress(f"⏳ Waiting for ready command: {options.ready_cmd}")
    deadline = time.monotonic() + options.timeout_s
    attempts = 0
    while True:
        attempts += 1
        remaining = max(1.0, deadline - time.monotonic())
        result = client.run(options.ready_cmd, timeout_s=min(30.0, remaining))
        if result.exit_code == 0:
            progress(f"✓ Ready after {attempts} check(s)")
            return
        if start is not None:
            start.check()
        if time.monotonic() >= deadline:
            tail = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()[-2:]
            raise BuildError(
                f"ready command {options.ready_cmd!r} did not succeed within {options.timeout_s / 60:g} min "
                f"({attempts} checks, last exit code {result.exit_code}: {' / '.join(tail) or 'no output'}); "
                "fix the command or raise -timeout"
            )
        time.sleep(READY_POLL_INTERVAL_S)

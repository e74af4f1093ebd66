"""Resuming a build into a running sandbox, and pausing a sandbox into a diff build.

Resume (facts file 5.4, in QEMU's terms)::

    load      metadata.json (VMM check), snapfile (downloaded), memfile and rootfs headers
    prepare   network slot, rootfs overlay served over NBD, guest RAM as a lazily served
              FUSE file over the layered memfile (only touched pages are ever read)
    restore   QEMU with the snapshot's machine, migration stream from the snapfile
    init      POST /init to envd, retried every 5 ms until it answers

Pause: ``sync`` in the guest, stop the VM, save its device state, let QEMU exit (its
dirty pages reach the memory overlay), then export both overlays as diffs over the
parent's headers (generation + 1) and store the build, metadata.json last.

A ``RunningSandbox`` owns everything it started; ``close`` tears it all down whether or
not a pause happened, so an interrupted command leaves no VM, slot, mount or server.
"""

from __future__ import annotations

import contextlib
import datetime
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ember.block import export_diff
from ember.build import (
    BuildArtifacts,
    BuildFile,
    TemplateInfo,
    TemplateMetadata,
    parse_metadata,
    upload_build,
)
from ember.envd.client import EnvdClient, EnvdError
from ember.environment import Environment
from ember.errors import BuildError, GuestError, ObjectNotFound
from ember.guest import ENVD_PORT, GuestKernel, build_initramfs, open_kernel, provision_kernel
from ember.header import Header
from ember.memory import LazyMemory, export_memory_diff
from ember.network import Slot, SlotPool
from ember.sandbox.rootfs import ServedRootfs
from ember.storage import MEMFILE, ROOTFS, SNAPFILE, BuildPaths, Storage
from ember.vmm.base import VmSnapshot
from ember.vmm.qemu import (
    MemoryFileConfig,
    QemuVm,
    SavedMachine,
    machine_for_restore,
    qemu_version,
    read_header,
)

INIT_RETRY_S = 0.005
INIT_ATTEMPT_S = 0.05
INIT_BUDGET_S = 10.0
QEMU_PREFIX = "qemu-"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LoadedBuild:
    """A build's parts that every resume of it needs, fetched once."""

    build_id: uuid.UUID
    metadata: TemplateMetadata
    memfile: BuildFile
    rootfs: BuildFile
    snapfile: Path
    machine: SavedMachine


def load_build(storage: Storage, build_id: uuid.UUID, scratch: Path) -> LoadedBuild:
    """Fetch metadata, snapfile and headers; refuse builds another VMM wrote or incomplete ones."""
    paths = BuildPaths(build_id)
    try:
        metadata = parse_metadata(storage.get(paths.metadata))
    except ObjectNotFound as exc:
        raise BuildError(
            f"build {build_id} is not complete in {storage.url}: it has no metadata.json "
            "(a create-build or pause that did not finish); pick a finished build"
        ) from exc
    if metadata.filesystem_only:
        raise BuildError(f"build {build_id} is filesystem-only (no memory snapshot): it cannot be resumed")
    vmm = metadata.template.firecracker_version
    if not vmm.startswith(QEMU_PREFIX):
        raise BuildError(
            f"build {build_id} was snapshotted by Firecracker {vmm or '(unknown)'}; ember resumes it only "
            "with Firecracker on a host whose KVM runs Linux guests, not with QEMU"
        )
    snapfile = scratch / f"{build_id}.snapfile"
    storage.get_to_file(paths.snapfile, snapfile)
    machine, _ = read_header(snapfile)
    return LoadedBuild(
        build_id,
        metadata,
        BuildFile.open(storage, build_id, MEMFILE),
        BuildFile.open(storage, build_id, ROOTFS),
        snapfile,
        machine,
    )


@dataclass(frozen=True)
class PauseResult:
    build_id: uuid.UUID
    memfile_header: Header
    rootfs_header: Header
    duration_s: float


class RunningSandbox:
    """A resumed guest and everything serving it; a context manager."""

    def __init__(self, build: LoadedBuild, env: Environment, work_dir: Path, pool: SlotPool) -> None:
        self.build = build
        self._started = time.monotonic()
        self._stack = contextlib.ExitStack()
        try:
            self.work_dir = work_dir
            work_dir.mkdir(parents=True, exist_ok=True)
            self.slot: Slot = pool.acquire()
            self._stack.callback(pool.release, self.slot)
            self.rootfs = self._stack.enter_context(
                ServedRootfs(build.rootfs, work_dir, "rootfs", build.rootfs.block_size)
            )
            self.memory = self._stack.enter_context(
                LazyMemory(build.memfile, work_dir, build.memfile.block_size)
            )
            kernel = _kernel(env, build.metadata.template.kernel_version)
            config = machine_for_restore(
                build.machine,
                kernel_path=kernel.vmlinuz_path,
                initrd_path=build_initramfs(kernel),
                drive_sources={"rootfs": self.rootfs.url},
                memory_file=MemoryFileConfig(self.memory.path, shared=True),
                taps=(self.slot.tap,),
                netns=self.slot.namespace,
                name=f"sandbox-{work_dir.name}",
            )
            snapshot = VmSnapshot(build.snapfile, self.memory.path, build.machine.memory_mib << 20)
            self.vm = QemuVm.restore(config, snapshot, work_dir / "vm")
            self._stack.callback(self.vm.stop)
            self.envd = EnvdClient(f"http://{self.slot.host_ip}:{ENVD_PORT}")
            self._init_envd()
            self.resumed_in_s = time.monotonic() - self._started
        except BaseException:
            self._stack.close()
            raise

    def _init_envd(self) -> None:
        """POST /init until it answers: each attempt is short, as the original's 50 ms attempts."""
        attempt = EnvdClient(self.envd.base_url, timeout_s=INIT_ATTEMPT_S)
        deadline = time.monotonic() + INIT_BUDGET_S
        while True:
            try:
                attempt.init(timestamp=datetime.datetime.now(datetime.UTC))
                return
            except EnvdError:  # not answering yet: the guest is still waking up
                self.vm.check_alive()
                if time.monotonic() >= deadline:
                    raise BuildError(
                        f"envd did not answer /init within {INIT_BUDGET_S:.0f} s after resume; "
                        f"the guest console is at {self.vm.console_path}"
                    ) from None
                time.sleep(INIT_RETRY_S)

    def pause(self, storage: Storage, new_build: uuid.UUID, progress: Progress) -> PauseResult:
        """Snapshot into ``new_build`` (memory and rootfs diffs over this build's); stops the VM."""
        started = time.monotonic()
        self.envd.run("sync; echo 3 > /proc/sys/vm/drop_caches", timeout_s=60)
        self.vm.pause()
        snapshot = self.vm.snapshot(self.work_dir / SNAPFILE)
        self.vm.stop()
        progress("⏸ Paused, exporting the diffs")
        memfile_header = export_memory_diff(
            self.memory, self.build.memfile.header, new_build, self.work_dir / MEMFILE
        )
        rootfs_header = export_diff(
            self.rootfs.overlay, self.build.rootfs.header, new_build, self.work_dir / ROOTFS
        )
        template = self.build.metadata.template
        metadata = self.build.metadata.same_version_template(
            TemplateInfo(str(new_build), template.kernel_version, qemu_version())
        )
        upload_build(
            storage,
            BuildArtifacts(
                build_id=new_build,
                metadata=metadata,
                rootfs_header=rootfs_header,
                rootfs_data=self.work_dir / ROOTFS,
                memfile_header=memfile_header,
                memfile_data=self.work_dir / MEMFILE,
                snapfile=snapshot.state_path,
            ),
        )
        return PauseResult(new_build, memfile_header, rootfs_header, time.monotonic() - started)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> RunningSandbox:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _kernel(env: Environment, version: str) -> GuestKernel:
    """The kernel the build was made with; local mode provisions it if it is Debian's current one."""
    try:
        return open_kernel(env.host_kernels_dir, version, env.target_arch)
    except GuestError:
        kernel = provision_kernel(env.host_kernels_dir, env.target_arch)
        if kernel.version != version:
            raise BuildError(
                f"the build was made with kernel {version}, which is not in {env.host_kernels_dir}: "
                f"copy it there (this host provisions {kernel.version})"
            ) from None
        return kernel

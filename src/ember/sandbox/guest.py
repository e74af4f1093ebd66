"""One VM's life inside the sandbox process: the VMM, guest memory and disk it runs on.

A ``Guest`` composes a ``Vm`` (``ember.vmm.base``) with a way to serve guest memory and
the rootfs overlay; the lifecycle code above it (``runtime``) sees only this protocol::

    QemuGuest          QEMU   + RAM in a file: lazily served over FUSE (resume, ``LazyMemory``)
                                or a plain/hugetlbfs file (cold boot); rootfs over NBD
    FirecrackerGuest   Firecracker + the userfaultfd page server (``PageServer``); rootfs over
                                NBD attached as a block device, at the path the snapshot baked in

Both restore a snapshot the same way (memory server first, then the VMM, then envd /init
with the sandbox's token, which the host vouches for through a channel only the VMM
writes: a fw_cfg file under QEMU, MMDS under Firecracker), and both end a pause in
``snapshot_and_export``: device state saved, VM stopped, memory diff written. Everything a
guest started is closed by ``close``, VM first (a memory server stopped before its VM
would leave the VM waiting on a fault forever).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ember.build import BuildFile
from ember.envd.agent.state import NO_TOKEN_HASH
from ember.envd.client import EnvdClient
from ember.environment import Environment
from ember.errors import BuildError, EmberError, GuestError, VmError
from ember.guest import (
    ENVD_PORT,
    GuestKernel,
    build_initramfs,
    open_kernel,
    provision_kernel,
    resolve_vmlinux,
)
from ember.header import HUGEPAGE_SIZE, NIL_UUID, PAGE_SIZE, Header, check_can_derive, empty_device_header
from ember.memory import LazyMemory, LazyMemoryError, Prefetcher, coalesce, export_memory, export_memory_diff
from ember.memory.hugepages import hugetlbfs
from ember.network import Slot
from ember.sandbox.records import BootSpec, BuildInfo, ResumeSpec, UsageReport, VmmKind
from ember.sandbox.rootfs import ServedRootfs
from ember.storage import MEMFILE, ROOTFS, SNAPFILE, LocalStorage, Storage
from ember.uffd import PageServer, export_memory_diff_snapshot
from ember.vmm.base import Vm, VmSnapshot
from ember.vmm.firecracker import (
    FirecrackerVm,
    MemoryBackend,
    MemoryBackendType,
    MmdsMetadata,
    SnapshotType,
    resolve_firecracker,
)
from ember.vmm.kernel_args import ip_arg, kernel_args
from ember.vmm.qemu import (
    DriveConfig,
    MachineConfig,
    MemoryFileConfig,
    NicConfig,
    QemuVm,
    machine_for_restore,
    qemu_version,
)

_log = logging.getLogger(__name__)

TOKEN_FW_CFG = "opt/e2b/envd-token-hash"
"""The fw_cfg file envd reads its token hash from (``ember.envd.agent.state``)."""


def serve_rootfs(storage: Storage, rootfs: BuildFile, work_dir: Path, socket_dir: Path) -> ServedRootfs:
    """The guest's rootfs served over NBD from a copy-on-write overlay of ``rootfs``.

    Its NBD server gets no disk thread over local storage, whose reads are short (the event
    loop's thread does them: one thread less per sandbox), and one over remote storage, so
    that a chunk fetch does not hold up the reads the chunk cache already has.
    """
    threads = 0 if isinstance(storage, LocalStorage) else 1
    return ServedRootfs(
        rootfs, work_dir, "rootfs", rootfs.block_size, socket_dir=socket_dir, disk_threads=threads
    )


def token_hash(access_token: str | None) -> str:
    """SHA-512 hex of the token, as MMDS carries it (the hash of "" when there is none)."""
    return hashlib.sha512(access_token.encode()).hexdigest() if access_token else NO_TOKEN_HASH


@dataclass(frozen=True)
class ExportedMemory:
    """What a pause produced besides the rootfs: the memfile diff and the device state."""

    memfile_header: Header
    memfile_data: Path
    snapfile: Path


class Guest(Protocol):
    """One VM with its memory and disk servers (see the module docstring)."""

    @property
    def vm(self) -> Vm: ...

    rootfs: ServedRootfs
    rootfs_parent: Header
    memfile_parent: Header
    envd: EnvdClient | None
    vmm_version: str
    """What the build's ``template.firecracker_version`` records (``qemu-<version>`` for QEMU)."""
    kernel_version: str | None
    restored_at: float
    """``time.monotonic()`` when the VM ran again (before envd's /init)."""
    work_dir: Path

    def pid(self) -> int | None: ...

    def check(self) -> None:
        """Raise the reason this guest cannot go on (VMM gone, memory or disk failed), if any."""
        ...

    def stop_prefetch(self) -> None: ...

    def snapshot_and_export(self, new_build: uuid.UUID, work_dir: Path) -> ExportedMemory:
        """From PAUSED: save device state, stop the VM, write the memory diff of ``new_build``."""
        ...

    def usage(self) -> UsageReport: ...

    def close(self) -> None: ...


def kernel_for(env: Environment, version: str | None) -> GuestKernel:
    """The kernel a build was made with (for ``None``: this host's), provisioned if it is Debian's current."""
    if version is not None:
        try:
            return open_kernel(env.host_kernels_dir, version, env.target_arch)
        except GuestError:
            pass
    kernel = provision_kernel(env.host_kernels_dir, env.target_arch)
    if version is not None and kernel.version != version:
        raise BuildError(
            f"the build was made with kernel {version}, which is not in {env.host_kernels_dir}: "
            f"copy it there (this host provisions {kernel.version})"
        )
    return kernel


def _init_envd(guest: Guest, client: EnvdClient, spec: ResumeSpec | BootSpec, timeout_s: float) -> None:
    client.init_when_ready(
        timeout_s,
        guest.check,
        access_token=spec.identity.access_token,
        env_vars=dict(spec.identity.env_vars),
        default_user=spec.identity.default_user,
        default_workdir=spec.identity.default_workdir,
    )


class QemuGuest:
    """A QEMU guest; build it with ``resume`` or ``boot``."""

    def __init__(self, work_dir: Path, slot: Slot) -> None:
        self._stack = contextlib.ExitStack()
        self.work_dir = work_dir
        self.slot = slot
        self.lazy: LazyMemory | None = None
        self.prefetcher: Prefetcher | None = None
        self.ram_path: Path | None = None
        self.memory_bytes = 0
        self.envd: EnvdClient | None = None
        self.vmm_version = qemu_version()
        self.kernel_version: str | None = None
        self.restored_at = 0.0

    # -- starting ----------------------------------------------------------------------------

    @classmethod
    def resume(
        cls, storage: Storage, env: Environment, spec: ResumeSpec, slot: Slot
    ) -> tuple[QemuGuest, float]:
        """Restore ``spec.build``; returns the guest and when its servers were ready (monotonic)."""
        build = spec.build
        if build.machine is None:
            raise BuildError(f"build {build.build_id} has no QEMU machine description in its snapfile")
        guest = cls(spec.workspace.work_dir, slot)
        try:
            memfile = BuildFile.open(storage, build.build_id, MEMFILE)
            rootfs = BuildFile.open(storage, build.build_id, ROOTFS)
            guest.memfile_parent, guest.rootfs_parent = memfile.header, rootfs.header
            guest.memory_bytes = memfile.size
            guest.lazy = guest._stack.enter_context(
                LazyMemory(memfile, guest.work_dir, memfile.block_size, auto_unmount=False)
            )
            plan = build.metadata.prefetch
            if spec.prefetch and plan is not None and plan.indices:
                guest.prefetcher = guest._stack.enter_context(
                    Prefetcher(
                        guest.lazy,
                        coalesce(plan.indices, plan.block_size),
                        source=None if isinstance(storage, LocalStorage) else memfile,
                    )
                )
            guest.rootfs = guest._stack.enter_context(
                serve_rootfs(storage, rootfs, guest.work_dir, spec.workspace.socket_dir)
            )
            kernel = kernel_for(env, build.metadata.template.kernel_version)
            guest.kernel_version = kernel.version
            config = machine_for_restore(
                build.machine,
                kernel_path=kernel.vmlinuz_path,
                initrd_path=build_initramfs(kernel),
                drive_sources={"rootfs": guest.rootfs.url},
                memory_file=MemoryFileConfig(guest.lazy.path, shared=True),
                taps=(slot.tap,),
                netns=slot.namespace,
                name=f"sandbox-{spec.sandbox_id}",
                fw_cfg={TOKEN_FW_CFG: token_hash(spec.identity.access_token)},
            )
            prepared = time.monotonic()
            snapshot = VmSnapshot(build.snapfile, guest.lazy.path, build.machine.memory_mib << 20)
            try:
                guest.vm = QemuVm.restore(
                    config, snapshot, guest.work_dir / "vm", socket_dir=spec.workspace.socket_dir
                )
                guest._stack.callback(guest.vm.stop)
                guest.restored_at = time.monotonic()
                if spec.wait_for_envd:
                    guest.envd = EnvdClient(f"http://{slot.host_ip}:{ENVD_PORT}")
                    _init_envd(guest, guest.envd, spec, spec.envd_timeout_s)
            except EmberError as exc:
                guest._raise_memory_failure(build.build_id, exc)
                raise
        except BaseException:
            guest.close()
            raise
        return guest, prepared

    @classmethod
    def boot(cls, storage: Storage, env: Environment, spec: BootSpec, slot: Slot) -> tuple[QemuGuest, float]:
        """Cold-boot over ``spec.base_rootfs``'s rootfs with fresh RAM in a (hugetlbfs) file."""
        guest = cls(spec.workspace.work_dir, slot)
        try:
            base = BuildFile.open(storage, spec.base_rootfs, ROOTFS)
            guest.rootfs_parent = base.header
            guest.memory_bytes = spec.memory_mib << 20
            block_size = HUGEPAGE_SIZE if spec.hugepages else PAGE_SIZE
            guest.memfile_parent = empty_device_header(NIL_UUID, guest.memory_bytes, block_size)
            guest.rootfs = guest._stack.enter_context(
                serve_rootfs(storage, base, guest.work_dir, spec.workspace.socket_dir)
            )
            memory_dir = guest.work_dir
            if spec.hugepages:
                memory_dir = guest._stack.enter_context(hugetlbfs(guest.work_dir, guest.memory_bytes))
            guest.ram_path = memory_dir / "memory"
            kernel = kernel_for(env, spec.kernel_version)
            config = MachineConfig(
                kernel_path=kernel.vmlinuz_path,
                initrd_path=build_initramfs(kernel),
                cmdline=kernel_args(ip=ip_arg(str(slot.guest_ip), str(slot.tap_ip))),
                memory_mib=spec.memory_mib,
                vcpu_count=spec.vcpu_count,
                drives=(DriveConfig(guest.rootfs.url),),
                memory_file=MemoryFileConfig(guest.ram_path, shared=True),
                nics=(NicConfig(tap=slot.tap, mac=slot.guest_mac),),
                netns=slot.namespace,
                name=f"sandbox-{spec.sandbox_id}",
                fw_cfg=((TOKEN_FW_CFG, token_hash(spec.identity.access_token)),),
            )
            guest.kernel_version = kernel.version
            prepared = time.monotonic()
            guest.vm = guest._stack.enter_context(
                QemuVm(config, guest.work_dir / "vm", socket_dir=spec.workspace.socket_dir)
            )
            guest.vm.boot()
            guest.restored_at = time.monotonic()
            guest.envd = EnvdClient(f"http://{slot.host_ip}:{ENVD_PORT}")
            _init_envd(guest, guest.envd, spec, spec.envd_timeout_s)
        except BaseException:
            guest.close()
            raise
        return guest, prepared

    vm: QemuVm
    rootfs: ServedRootfs
    rootfs_parent: Header
    memfile_parent: Header

    # -- running -----------------------------------------------------------------------------

    def pid(self) -> int | None:
        return self.vm.pid

    def check(self) -> None:
        if self.lazy is not None:
            self.lazy.raise_if_failed()
        self.rootfs.raise_if_failed()
        self.vm.check_alive()

    def _raise_memory_failure(self, build_id: uuid.UUID, cause: EmberError) -> None:
        """Report a failed guest memory read as the reason, rather than what it did to QEMU."""
        if self.lazy is None:
            return
        try:
            self.lazy.raise_if_failed()
        except LazyMemoryError as failure:
            raise BuildError(f"resuming build {build_id} failed: {failure}") from cause

    def stop_prefetch(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()

    def snapshot_and_export(self, new_build: uuid.UUID, work_dir: Path) -> ExportedMemory:
        check_can_derive(self.memfile_parent)
        memfile_data = work_dir / MEMFILE
        if self.lazy is not None:
            # A paused guest writes no memory, so its diff is exported while QEMU saves its
            # device state and exits.
            lazy = self.lazy
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="memory-export") as pool:
                export = pool.submit(export_memory_diff, lazy, self.memfile_parent, new_build, memfile_data)
                try:
                    snapshot = self.vm.snapshot(work_dir / SNAPFILE)
                finally:
                    self.vm.stop()
                header = export.result()
            return ExportedMemory(header, memfile_data, snapshot.state_path)
        assert self.ram_path is not None
        snapshot = self.vm.snapshot(work_dir / SNAPFILE)
        self.vm.stop()
        block_size = self.memfile_parent.metadata.block_size
        header = export_memory(self.ram_path, self.memory_bytes, block_size, new_build, memfile_data)
        return ExportedMemory(header, memfile_data, snapshot.state_path)

    def usage(self) -> UsageReport:
        stats = self.lazy.stats() if self.lazy is not None else None
        return UsageReport(
            memory_read_bytes=stats.base_read_bytes if stats is not None else 0,
            memory_written_bytes=stats.written_bytes if stats is not None else 0,
            faults_served=stats.reads if stats is not None else 0,
            rootfs_written_bytes=int(self.rootfs.overlay.diff_metadata().dirty.size)
            * self.rootfs.overlay.block_size,
            disk_failures=self.rootfs.disk.failures,
        )

    def close(self) -> None:
        self._stack.close()


class FirecrackerGuest:
    """A Firecracker guest restored with its memory served by ember's userfaultfd page server.

    Firecracker finds the rootfs and kernel at the paths its snapshot baked in
    (``$SANDBOX_DIR/rootfs.ext4``, facts 5.1), so it runs in a private mount namespace
    where a tmpfs at SANDBOX_DIR holds a link to the attached overlay. The token reaches
    envd through MMDS (``accessTokenHash``).
    """

    def __init__(self, work_dir: Path, slot: Slot) -> None:
        self._stack = contextlib.ExitStack()
        self.work_dir = work_dir
        self.slot = slot
        self.envd: EnvdClient | None = None
        self.vmm_version = ""
        self.kernel_version: str | None = None
        self.restored_at = 0.0

    vm: FirecrackerVm
    rootfs: ServedRootfs
    rootfs_parent: Header
    memfile_parent: Header
    server: PageServer

    @classmethod
    def resume(
        cls, storage: Storage, env: Environment, spec: ResumeSpec, slot: Slot
    ) -> tuple[FirecrackerGuest, float]:
        build = spec.build
        guest = cls(spec.workspace.work_dir, slot)
        guest.vmm_version = build.metadata.template.firecracker_version
        guest.kernel_version = build.metadata.template.kernel_version
        try:
            memfile = BuildFile.open(storage, build.build_id, MEMFILE)
            rootfs = BuildFile.open(storage, build.build_id, ROOTFS)
            guest.memfile_parent, guest.rootfs_parent = memfile.header, rootfs.header
            guest.rootfs = guest._stack.enter_context(
                serve_rootfs(storage, rootfs, guest.work_dir, spec.workspace.socket_dir)
            )
            device = guest.rootfs.attach(guest.work_dir)
            guest.server = guest._stack.enter_context(
                PageServer(memfile, spec.workspace.socket_dir / f"uffd-{spec.sandbox_id[:16]}.sock")
            )
            binary = resolve_firecracker(
                env.firecracker_versions_dir, build.metadata.template.firecracker_version, env.target_arch
            )
            links = {"rootfs.ext4": device.path}
            kernel = build.metadata.template.kernel_version
            # A restore never boots the kernel, so the link is kept only where the snapshot's
            # path can point somewhere: the seed's {kernel}/{arch}/vmlinux.bin, never provisioned.
            with contextlib.suppress(GuestError):
                links[f"{kernel}/vmlinux.bin"] = resolve_vmlinux(
                    env.host_kernels_dir, kernel, env.target_arch
                )
            prepared = time.monotonic()
            snapshot = VmSnapshot(build.snapfile, guest.work_dir / "unused.mem", memfile.size)
            # Firecracker's API socket lives in its run directory, and a work_dir path can pass
            # the 108-byte cap of a unix socket path: the run directory is reached through a
            # link in the (short) socket directory, its files stay in work_dir.
            run_dir = guest.work_dir / "vm"
            run_dir.mkdir(exist_ok=True)
            short_run_dir = spec.workspace.socket_dir / "vm"
            short_run_dir.unlink(missing_ok=True)
            short_run_dir.symlink_to(run_dir)
            guest.vm = FirecrackerVm.restore(
                snapshot,
                short_run_dir,
                binary=binary,
                netns=slot.namespace,
                memory_backend=MemoryBackend(MemoryBackendType.UFFD, guest.server.socket_path),
                enable_diff_snapshots=True,
                name=f"sandbox-{spec.sandbox_id}",
                sandbox_dir=env.sandbox_dir,
                sandbox_links=links,
            )
            guest._stack.callback(guest.vm.stop)
            guest.restored_at = time.monotonic()
            if spec.wait_for_envd:
                guest.vm.api.put_mmds(
                    MmdsMetadata(
                        spec.sandbox_id,
                        build.metadata.template.build_id,
                        access_token=spec.identity.access_token,
                    ).to_json()
                )
                guest.envd = EnvdClient(f"http://{slot.host_ip}:{ENVD_PORT}")
                _init_envd(guest, guest.envd, spec, spec.envd_timeout_s)
        except BaseException:
            guest.close()
            raise
        return guest, prepared

    def pid(self) -> int | None:
        return self.vm.pid

    def check(self) -> None:
        self.server.raise_if_failed()
        self.rootfs.raise_if_failed()
        self.vm.check_alive()

    def stop_prefetch(self) -> None:
        """Firecracker builds are prefetched by their page server's own faults only."""

    def snapshot_and_export(self, new_build: uuid.UUID, work_dir: Path) -> ExportedMemory:
        check_can_derive(self.memfile_parent)
        try:
            diff = self.vm.snapshot(work_dir / SNAPFILE, work_dir / "diff.mem", kind=SnapshotType.DIFF)
        finally:
            self.vm.stop()
        memfile_data = work_dir / MEMFILE
        header = export_memory_diff_snapshot(
            diff.memory_path, self.memfile_parent, new_build, memfile_data, self.server.tracker
        )
        diff.memory_path.unlink(missing_ok=True)
        return ExportedMemory(header, memfile_data, diff.state_path)

    def usage(self) -> UsageReport:
        stats = self.server.stats
        return UsageReport(
            memory_read_bytes=stats.bytes_installed,
            memory_written_bytes=0,
            faults_served=stats.faults,
            rootfs_written_bytes=int(self.rootfs.overlay.diff_metadata().dirty.size)
            * self.rootfs.overlay.block_size,
            disk_failures=self.rootfs.disk.failures,
        )

    def close(self) -> None:
        self._stack.close()


def resume_guest(
    storage: Storage, env: Environment, spec: ResumeSpec, slot: Slot
) -> tuple[QemuGuest | FirecrackerGuest, float]:
    """The guest for the VMM that wrote ``spec.build``."""
    if spec.build.vmm is VmmKind.FIRECRACKER:
        return FirecrackerGuest.resume(storage, env, spec, slot)
    return QemuGuest.resume(storage, env, spec, slot)


def describe_vm_exit(guest: Guest) -> str:
    """Why a guest's VMM is gone, for logs and the sandbox's failure."""
    try:
        guest.vm.check_alive()
    except VmError as exc:
        return str(exc)
    return "the VMM is running"


def check_build(build: BuildInfo) -> None:
    """Refuse what no guest here can resume, before anything is started for it."""
    if build.metadata.filesystem_only:
        raise BuildError(
            f"build {build.build_id} is filesystem-only (no memory snapshot): boot it from its rootfs instead"
        )

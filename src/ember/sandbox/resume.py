"""Resuming a build into a running sandbox, and pausing a sandbox into a diff build.

Resume (facts file 5.4, in QEMU's terms)::

    load      metadata.json (VMM check), snapfile (downloaded), memfile and rootfs headers
    prepare   in parallel: the network slot (a background thread, ~40-80 ms of netlink and
              iptables) | rootfs overlay served over NBD, guest RAM as a lazily served FUSE
              file over the layered memfile, the prefetcher (when the build has prefetch
              data) loading recorded pages into that file's page cache, kernel + initramfs
    restore   QEMU with the snapshot's machine, migration stream from the snapfile
    init      connect to envd every 5 ms (50 ms attempts, as the original's), then POST
              /init with a longer wait: a guest on TCG needs ~150 ms to answer its first
              request, and a 50 ms attempt would abandon it half done, again and again

A storage read that still fails after the memory file's retries ends the resume at once
with that failure (``BuildError``), whatever the guest or QEMU make of the error.

Pause: ``sync`` in the guest, stop the VM, save its device state, let QEMU exit (its
dirty pages reach the memory overlay), then export both overlays as diffs over the
parent's headers (generation + 1) and store the build, metadata.json last.

Prefetch data (``record_prefetch``, ``resume-build -optimize``): resume a build twice
without prefetch, record the pages each run reads, keep the pages both read (facts 4.6).

A ``RunningSandbox`` owns everything it started; ``close`` tears it all down whether or
not a pause happened, so an interrupted command leaves no VM, slot, mount or server.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import socket
import threading
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
    MemoryPrefetch,
    TemplateInfo,
    TemplateMetadata,
    parse_metadata,
    upload_build,
)
from ember.envd.client import EnvdClient, EnvdError
from ember.environment import Environment
from ember.errors import BuildError, EmberError, GuestError, ObjectNotFound
from ember.guest import ENVD_PORT, GuestKernel, build_initramfs, open_kernel, provision_kernel
from ember.header import Header
from ember.memory import LazyMemory, LazyMemoryError, Prefetcher, coalesce, export_memory_diff, merge_runs
from ember.network import Slot, SlotPool
from ember.sandbox.rootfs import ServedRootfs
from ember.storage import MEMFILE, ROOTFS, SNAPFILE, BuildPaths, LocalStorage, Storage
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
INIT_REQUEST_TIMEOUT_S = 2.0
INIT_BUDGET_S = 10.0
OPTIMIZE_RUNS = 2
OPTIMIZE_SETTLE_S = 1.0
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
    remote: bool = False
    """The build's storage is not a local directory: prefetching also warms the chunk cache."""


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
        remote=not isinstance(storage, LocalStorage),
    )


@dataclass(frozen=True)
class ResumeTimings:
    """Where a resume's time went: slot, servers and mounts; QEMU restore; envd answering /init."""

    prepare_s: float
    restore_s: float
    init_s: float


@dataclass(frozen=True)
class PauseResult:
    build_id: uuid.UUID
    memfile_header: Header
    rootfs_header: Header
    duration_s: float


class RunningSandbox:
    """A resumed guest and everything serving it; a context manager.

    ``prefetch=False`` ignores the build's prefetch data (``-no-prefetch``, and the
    recording runs of ``record_prefetch``, which must see every page the guest reads).
    """

    def __init__(
        self, build: LoadedBuild, env: Environment, work_dir: Path, pool: SlotPool, *, prefetch: bool = True
    ) -> None:
        self.build = build
        self._started = time.monotonic()
        self._stack = contextlib.ExitStack()
        self.prefetcher: Prefetcher | None = None
        try:
            self.work_dir = work_dir
            work_dir.mkdir(parents=True, exist_ok=True)
            slot = self._acquire_slot(pool)
            self.memory = self._stack.enter_context(
                LazyMemory(build.memfile, work_dir, build.memfile.block_size)
            )
            plan = build.metadata.prefetch
            if prefetch and plan is not None and plan.indices:
                self.prefetcher = self._stack.enter_context(
                    Prefetcher(
                        self.memory,
                        coalesce(plan.indices, plan.block_size),
                        source=build.memfile if build.remote else None,
                    )
                )
            self.rootfs = self._stack.enter_context(
                ServedRootfs(build.rootfs, work_dir, "rootfs", build.rootfs.block_size)
            )
            kernel = kernel_for(env, build.metadata.template.kernel_version)
            initramfs = initramfs_for(kernel)
            self.slot: Slot = slot.result()
            config = machine_for_restore(
                build.machine,
                kernel_path=kernel.vmlinuz_path,
                initrd_path=initramfs,
                drive_sources={"rootfs": self.rootfs.url},
                memory_file=MemoryFileConfig(self.memory.path, shared=True),
                taps=(self.slot.tap,),
                netns=self.slot.namespace,
                name=f"sandbox-{work_dir.name}",
            )
            snapshot = VmSnapshot(build.snapfile, self.memory.path, build.machine.memory_mib << 20)
            self.envd = EnvdClient(f"http://{self.slot.host_ip}:{ENVD_PORT}")
            prepared = time.monotonic()
            try:
                self.vm = QemuVm.restore(config, snapshot, work_dir / "vm")
                self._stack.callback(self.vm.stop)
                restored = time.monotonic()
                init_envd(self.vm, str(self.slot.host_ip), self.memory.raise_if_failed)
            except EmberError as exc:
                self._raise_memory_failure(exc)
                raise
            done = time.monotonic()
            self.timings = ResumeTimings(prepared - self._started, restored - prepared, done - restored)
            self.resumed_in_s = done - self._started
        except BaseException:
            self._stack.close()
            raise

    def _acquire_slot(self, pool: SlotPool) -> concurrent.futures.Future[Slot]:
        """Create the network slot on a thread while the rest is prepared; released by ``close``."""
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="slot")
        future = executor.submit(pool.acquire)
        executor.shutdown(wait=False)

        def release() -> None:
            if future.exception() is None:  # waits for it; a failed acquire has nothing to release
                pool.release(future.result())

        self._stack.callback(release)
        return future

    def _raise_memory_failure(self, cause: EmberError) -> None:
        """Report a failed guest memory read as the reason, rather than what it did to QEMU."""
        try:
            self.memory.raise_if_failed()
        except LazyMemoryError as failure:
            raise BuildError(f"resuming build {self.build.build_id} failed: {failure}") from cause

    def pause(self, storage: Storage, new_build: uuid.UUID, progress: Progress) -> PauseResult:
        """Snapshot into ``new_build`` (memory and rootfs diffs over this build's); stops the VM."""
        started = time.monotonic()
        if self.prefetcher is not None:
            self.prefetcher.close()
        self.envd.run_program("/bin/sync", timeout_s=60)
        self.vm.pause()
        progress("⏸ Paused, exporting the diffs")
        # A paused guest writes no memory, so its diff is exported while QEMU saves its device
        # state and exits; the rootfs waits for the snapshot, which drains QEMU's disk writes.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="memory-export") as pool:
            memory_export = pool.submit(
                export_memory_diff, self.memory, self.build.memfile.header, new_build, self.work_dir / MEMFILE
            )
            snapshot = self.vm.snapshot(self.work_dir / SNAPFILE)
            self.vm.stop()
            memfile_header = memory_export.result()
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
            consume_files=True,
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


def kernel_for(env: Environment, version: str) -> GuestKernel:
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


def init_envd(vm: QemuVm, host: str, check: Callable[[], None] = lambda: None) -> None:
    """Wait until envd on ``host`` accepts a connection, then POST /init; 10 s in all.

    Connecting is retried every 5 ms with 50 ms attempts (the original's): a SYN the guest
    was not yet running to answer would otherwise wait for TCP's 1 s retransmission. Once
    it connects, the request gets ``INIT_REQUEST_TIMEOUT_S``: a guest on TCG needs ~150 ms
    to answer its first request, and shorter attempts would abandon it half done, again
    and again. ``check`` runs before every attempt and raises to give up early.
    """
    attempt = EnvdClient(f"http://{host}:{ENVD_PORT}", timeout_s=INIT_REQUEST_TIMEOUT_S)
    deadline = time.monotonic() + INIT_BUDGET_S
    connected = False
    while True:
        check()
        try:
            if not connected:
                socket.create_connection((host, ENVD_PORT), timeout=INIT_ATTEMPT_S).close()
                connected = True
            attempt.init(timestamp=datetime.datetime.now(datetime.UTC))
            return
        except (OSError, EnvdError):  # not answering yet: the guest is still waking up
            vm.check_alive()
            if time.monotonic() >= deadline:
                raise BuildError(
                    f"envd did not answer /init within {INIT_BUDGET_S:.0f} s after resume; "
                    f"the guest console is at {vm.console_path}"
                ) from None
            time.sleep(INIT_RETRY_S)


_INITRAMFS: dict[GuestKernel, Path] = {}
_INITRAMFS_LOCK = threading.Lock()


def initramfs_for(kernel: GuestKernel) -> Path:
    """The kernel's initramfs, built or found once per process (finding it hashes every module)."""
    with _INITRAMFS_LOCK:
        known = _INITRAMFS.get(kernel)
        if known is None or not known.is_file():
            known = _INITRAMFS[kernel] = build_initramfs(kernel)
        return known


def record_prefetch(
    storage: Storage,
    build_id: uuid.UUID,
    env: Environment,
    work_dir: Path,
    pool: SlotPool,
    *,
    runs: int = OPTIMIZE_RUNS,
    settle_s: float = OPTIMIZE_SETTLE_S,
    progress: Progress = print,
) -> MemoryPrefetch:
    """Resume ``build_id`` ``runs`` times without prefetch; the pages every run read (facts 4.6).

    Each run lasts until envd answered /init plus ``settle_s``, so what the guest does
    right after waking counts too.
    """
    build = load_build(storage, build_id, work_dir)
    recorded = []
    for run in range(runs):
        with RunningSandbox(build, env, work_dir / f"optimize-{run}", pool, prefetch=False) as sandbox:
            time.sleep(settle_s)
            recorded.append(sandbox.memory.accesses())
        progress(f"   prefetch run {run + 1}/{runs}: {len(recorded[-1])} pages read")
    return merge_runs(recorded)


def save_prefetch(storage: Storage, build_id: uuid.UUID, prefetch: MemoryPrefetch) -> TemplateMetadata:
    """Rewrite the build's metadata.json with ``prefetch`` (a single atomic put); the new metadata."""
    key = BuildPaths(build_id).metadata
    metadata = dataclasses.replace(parse_metadata(storage.get(key)), prefetch=prefetch)
    storage.put(key, metadata.to_json())
    return metadata

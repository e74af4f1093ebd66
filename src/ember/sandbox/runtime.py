"""The sandbox process's one sandbox: started (resumed or booted), paused, checkpointed or killed.

This is the half of ``Sandbox`` that runs where the guest's servers run (``worker``): the
owner sends it records (``records``), it drives a ``Guest`` and reports back. It holds at
most one guest at a time; a checkpoint replaces the guest with one resumed from the build
it just wrote, in the same network slot, with the same token.

After ``pause`` or ``kill`` (or a failure) there is no guest: the process has done its
work and exits. The owner alone decides states; this side only refuses what cannot be
done (no guest to pause) with a clear error.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path

from ember.environment import Environment
from ember.errors import UsageError
from ember.header import NIL_UUID
from ember.memory import PageAccesses
from ember.network import Slot
from ember.sandbox.guest import (
    FirecrackerGuest,
    Guest,
    QemuGuest,
    check_build,
    describe_vm_exit,
    resume_guest,
)
from ember.sandbox.pause import pause_guest
from ember.sandbox.records import (
    BootSpec,
    EventSink,
    PauseReport,
    PauseSpec,
    ResumeSpec,
    SandboxEvent,
    StartReport,
    UsageReport,
    scheduling_info,
)
from ember.sandbox.resume import load_build_info
from ember.storage import ChunkCache, Storage


class SandboxRuntime:
    """Drives one sandbox's guest inside the sandbox process (see the module docstring)."""

    def __init__(self, storage: Storage, env: Environment, emit: EventSink) -> None:
        self.storage = storage
        self.env = env
        self.emit = emit
        self.guest: QemuGuest | FirecrackerGuest | None = None
        self._resume_spec: ResumeSpec | None = None
        self._slot: Slot | None = None
        self._sandbox_id = ""

    # -- starting ----------------------------------------------------------------------------

    def resume(self, spec: ResumeSpec, slot: Slot) -> StartReport:
        self._require_no_guest("resume")
        check_build(spec.build)
        self._sandbox_id, self._slot, self._resume_spec = spec.sandbox_id, slot, spec
        started = time.monotonic()
        guest, prepared = resume_guest(self.storage, self.env, spec, slot)
        return self._started(guest, spec.build.build_id, started, prepared)

    def boot(self, spec: BootSpec, slot: Slot) -> StartReport:
        self._require_no_guest("boot")
        self._sandbox_id, self._slot = spec.sandbox_id, slot
        started = time.monotonic()
        guest, prepared = QemuGuest.boot(self.storage, self.env, spec, slot)
        return self._started(guest, spec.base_rootfs, started, prepared)

    def _started(
        self, guest: QemuGuest | FirecrackerGuest, build_id: uuid.UUID, started: float, prepared: float
    ) -> StartReport:
        self.guest = guest
        memfile = guest.memfile_parent if guest.memfile_parent.metadata.build_id != NIL_UUID else None
        return StartReport(
            prepare_s=prepared - started,
            restore_s=guest.restored_at - prepared,
            init_s=time.monotonic() - guest.restored_at,
            scheduling=scheduling_info(build_id, memfile, guest.rootfs_parent),
        )

    # -- running -----------------------------------------------------------------------------

    def check(self) -> None:
        """Raise why the guest cannot go on (VMM gone, memory or disk failed); nothing when healthy."""
        self._require_guest("check").check()

    def usage(self) -> UsageReport:
        report = self._require_guest("report usage of").usage()
        if isinstance(self.storage, ChunkCache):
            report = dataclasses.replace(report, chunks_fetched=self.storage.stats().chunks_fetched)
        return report

    def accesses(self) -> PageAccesses:
        """The guest memory pages read so far, in first-access order (prefetch data)."""
        guest = self._require_guest("record the memory accesses of")
        if not isinstance(guest, QemuGuest) or guest.lazy is None:
            raise UsageError("recording prefetch data needs a QEMU sandbox resumed from a build")
        return guest.lazy.accesses()

    def vm_pid(self) -> int | None:
        return self.guest.pid() if self.guest is not None else None

    def exit_reason(self) -> str:
        return describe_vm_exit(self.guest) if self.guest is not None else "the sandbox has no VM"

    # -- ending ------------------------------------------------------------------------------

    def pause(self, spec: PauseSpec) -> PauseReport:
        guest = self._require_guest("pause")
        try:
            return pause_guest(guest, spec, self.storage, self._scratch(spec), self._sandbox_id, self.emit)
        finally:
            self.kill()

    def checkpoint(self, spec: PauseSpec) -> tuple[PauseReport, StartReport]:
        """Pause into ``spec.build_id``, then resume from it in the same slot with the same token."""
        guest = self._require_guest("checkpoint")
        if self._resume_spec is None or self._slot is None:
            raise UsageError("checkpointing needs a sandbox resumed from a build, not a cold-booted one")
        try:
            paused = pause_guest(guest, spec, self.storage, self._scratch(spec), self._sandbox_id, self.emit)
        finally:
            self.kill()
        build = load_build_info(self.storage, spec.build_id, self.env)
        resumed = self.resume(dataclasses.replace(self._resume_spec, build=build, prefetch=False), self._slot)
        return paused, resumed

    def kill(self) -> None:
        """Stop the VM and every server of the guest; safe to call when there is none."""
        guest, self.guest = self.guest, None
        if guest is not None:
            guest.close()
            self.emit(SandboxEvent(self._sandbox_id, "stopped", "the VM and its servers are stopped"))

    def _scratch(self, spec: PauseSpec) -> Path:
        assert self.guest is not None
        return self.guest.work_dir / f"pause-{spec.build_id}"

    def _require_guest(self, action: str) -> Guest:
        if self.guest is None:
            raise UsageError(f"cannot {action} the sandbox: it has no running VM")
        return self.guest

    def _require_no_guest(self, action: str) -> None:
        if self.guest is not None:
            raise UsageError(f"cannot {action}: this sandbox process already runs a VM")

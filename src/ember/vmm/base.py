"""What the sandbox layer needs from a VMM, whichever VMM it is.

Lifecycle of one ``Vm`` (a process of the VMM)::

    CREATED --boot()--> RUNNING <--pause()/resume()--> PAUSED --snapshot()--> PAUSED
       |                  |                              |
       +------------------+-------- stop() / guest powers off ----> STOPPED

A snapshot is taken from PAUSED and leaves the VM PAUSED; a restored VM starts RUNNING
(the driver's ``restore`` constructor). Calling a method in a state that does not allow it
raises VmError naming the state, and leaves the state unchanged. ``stop()`` is allowed
in every state and always reaps the VMM process: no zombies, whatever failed before.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from ember.errors import VmError


class VmState(enum.Enum):
    """Where a VM is in its lifecycle (see the module docstring)."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(frozen=True)
class VmSnapshot:
    """The files a paused VM was saved into.

    ``state_path`` holds device and CPU state (the seed's ``snapfile``); guest RAM is the
    VM's memory file at ``memory_path``, which the VMM kept up to date while running and
    must not change until the snapshot has been copied or restored.
    """

    state_path: Path
    memory_path: Path
    memory_bytes: int


@runtime_checkable
class Vm(Protocol):
    """One VMM process running (or about to run) one guest."""

    @property
    def state(self) -> VmState: ...

    @property
    def console_path(self) -> Path:
        """The guest's serial console, appended to while the VM runs."""
        ...

    @property
    def pid(self) -> int | None:
        """The VMM process's pid once started (None before)."""
        ...

    def check_alive(self) -> None:
        """Raise VmError, with what the guest and the VMM last printed, if the VMM has exited."""
        ...

    def boot(self) -> None:
        """Start the VMM and the guest (CREATED -> RUNNING)."""
        ...

    def wait_for_console(self, marker: str, timeout_s: float) -> str:
        """The first console line containing ``marker``; VmError on timeout or VMM exit."""
        ...

    def wait_exit(self, timeout_s: float) -> int:
        """Wait for the guest to power off; the VMM's exit status (-> STOPPED)."""
        ...

    def pause(self) -> None:
        """Stop the vCPUs (RUNNING -> PAUSED)."""
        ...

    def resume(self) -> None:
        """Continue the vCPUs (PAUSED -> RUNNING)."""
        ...

    def snapshot(self, state_path: Path) -> VmSnapshot:
        """Save device state to ``state_path``; RAM stays in the memory file (PAUSED only)."""
        ...

    def stop(self, timeout_s: float = 5.0) -> int:
        """End the VMM (politely, then by force) and reap it; its exit status (-> STOPPED)."""
        ...


def require_state(vm_name: str, state: VmState, action: str, *allowed: VmState) -> None:
    """Raise VmError unless ``state`` is one of ``allowed``."""
    if state not in allowed:
        names = " or ".join(s.value for s in allowed)
        raise VmError(f"cannot {action} VM {vm_name}: it is {state.value}, {action} needs it {names}")

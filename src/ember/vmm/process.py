"""What every VMM driver does the same way: its child process, its state, its serial console.

Both drivers keep the guest's serial console in ``run_dir/console.log`` and one VMM child
process; how a VM is started, configured and stopped differs and stays in each driver.
Keeping this part in one class means a fix to waiting, exit detection or error text reaches
both drivers at once.

The spawning rule: a VMM is started with ``setpriv --pdeathsig KILL``, so it dies with
the process that started it (an ember killed with SIGKILL must not leave a guest running
with its disk and memory servers gone). Linux ties that signal to the *thread* that
forked, not to the process: a VMM started from a short-lived thread is killed when the
thread ends. So VMMs are started only from a thread that lives as long as the VM: the
main thread of the sandbox process (``ember.sandbox.worker``), which owns one sandbox and
whose death is exactly the event that must end the VM.
"""

from __future__ import annotations

import abc
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from ember.errors import VmError
from ember.vmm.base import VmState

CONSOLE_FILE = "console.log"
_CONSOLE_POLL_S = 0.1


class VmProcess(abc.ABC):
    """A VMM child process running one guest; subclasses start, configure and stop it."""

    vmm_name = "the VMM"

    def __init__(self, name: str, run_dir: Path) -> None:
        self.name = name
        self.run_dir = run_dir
        self._state = VmState.CREATED
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def state(self) -> VmState:
        """The current state; a VMM process that exited on its own makes it STOPPED."""
        if (
            self._state is not VmState.STOPPED
            and self._process is not None
            and self._process.poll() is not None
        ):
            self._finish()
        return self._state

    @property
    def console_path(self) -> Path:
        return self.run_dir / CONSOLE_FILE

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def wait_for_console(self, marker: str, timeout_s: float) -> str:
        """The first console line containing ``marker``; VmError on timeout or VMM exit."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self._console_text().splitlines():
                if marker in line:
                    return line
            if self._process is None or self._process.poll() is not None:
                raise VmError(
                    f"{self.vmm_name} exited before the guest printed {marker!r}; {self._diagnosis()}"
                )
            if time.monotonic() >= deadline:
                raise VmError(
                    f"the guest did not print {marker!r} within {timeout_s:.1f} s; {self._diagnosis()}"
                )
            time.sleep(_CONSOLE_POLL_S)

    def wait_exit(self, timeout_s: float) -> int:
        """Wait for the guest to power off (the VMM exits); its exit status."""
        if self._process is None:
            raise VmError(f"cannot wait for VM {self.name}: it was never booted")
        try:
            status = self._process.wait(timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise VmError(
                f"the guest did not power off within {timeout_s:.0f} s; {self._diagnosis()}; call stop()"
            ) from exc
        self._finish()
        return status

    def console_tail(self, lines: int = 5) -> str:
        """The last lines the guest printed, joined with ' | ' for one-line error messages."""
        return " | ".join(self._console_text().strip().splitlines()[-lines:]) or "(empty)"

    def check_alive(self) -> None:
        """Raise VmError, with what the guest and the VMM last printed, if the VMM has exited."""
        if self._process is None or self._process.poll() is not None:
            raise VmError(f"{self.vmm_name} {self.name} is not running; {self._diagnosis()}")

    @abc.abstractmethod
    def stop(self, timeout_s: float = 5.0) -> int:
        """End the VMM process (always waited for); its exit status."""

    @abc.abstractmethod
    def _diagnosis(self) -> str:
        """What the console and the VMM's own output say, for error messages."""

    def _finish(self) -> None:
        self._state = VmState.STOPPED

    def _console_text(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

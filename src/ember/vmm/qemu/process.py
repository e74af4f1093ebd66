"""One QEMU process running one guest: spawn, console, pause, snapshot, restore, stop.

Files in the VM's run directory (created by the caller, one directory per VM)::

    console.log     the guest's serial port (QEMU truncates it at spawn)
    qmp.sock        QMP control socket
    qemu.stderr     QEMU's own complaints, quoted in errors when it exits early

Snapshot and restore follow the feasibility study (section 4): guest RAM lives in a
``memory-backend-file``; ``x-ignore-shared`` leaves that RAM out of the migration stream,
which is then written by ``migrate exec:cat > <state file>`` (QEMU 7.2 has no ``file:``
URI). A restore is a new QEMU with the same machine config plus ``-incoming defer``,
fed ``exec:cat <state file>``; it continues the guest exactly where it was paused.

Guarantee: every spawned QEMU is reaped. ``stop()`` asks QMP ``quit``, then SIGKILLs after
``timeout_s``, and always ``wait()``s; ``with QemuVm(...)`` calls it on exit.
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ember.errors import EmberError, VmError
from ember.vmm.base import VmSnapshot, VmState, require_state
from ember.vmm.process import VmProcess
from ember.vmm.qemu.config import Accel, MachineConfig, choose_accel, qemu_argv
from ember.vmm.qemu.qmp import QmpClient
from ember.vmm.qemu.snapfile import read_header, saved_machine, write_header

QMP_SOCKET = "qmp.sock"
STDERR_FILE = "qemu.stderr"
_QMP_CONNECT_TIMEOUT_S = 10.0
_MIGRATION_TIMEOUT_S = 60.0
_MIGRATION_POLL_S = 0.002  # a restore's migration takes ~1 ms: poll finely, it is on the resume path
_GIVE_UP_EXIT_S = 2.0
"""How long a QEMU that dropped its QMP socket mid-restore gets to finish exiting (it closes it first)."""


class QemuVm(VmProcess):
    """A QEMU guest; see ``ember.vmm.base.Vm`` for the state machine it follows."""

    vmm_name = "QEMU"

    def __init__(
        self,
        config: MachineConfig,
        run_dir: Path,
        *,
        accel: Accel | None = None,
        socket_dir: Path | None = None,
    ) -> None:
        """``socket_dir`` holds the QMP socket (default: a private directory under $TMPDIR)."""
        super().__init__(config.name, run_dir)
        self.config = config
        self.accel = accel if accel is not None else choose_accel().accel
        self._qmp: QmpClient | None = None
        self._given_socket_dir = socket_dir
        self._socket_dir: Path | None = None
        self._qmp_path: Path | None = None

    @classmethod
    def restore(
        cls,
        config: MachineConfig,
        snapshot: VmSnapshot,
        run_dir: Path,
        *,
        accel: Accel | None = None,
        socket_dir: Path | None = None,
    ) -> QemuVm:
        """A new QEMU continuing the guest saved in ``snapshot`` (-> RUNNING).

        ``config`` must be the config the snapshot was taken with, except that its memory
        file may be a copy of ``snapshot.memory_path`` or mapped ``shared=False``.
        """
        if config.memory_file is None:
            raise VmError(
                "cannot restore a QEMU snapshot without a memory file: set MachineConfig.memory_file"
            )
        saved, stream_offset = read_header(snapshot.state_path)
        if saved != saved_machine(config):
            raise VmError(
                f"the snapshot was saved from a different machine ({saved}) than the one to restore "
                f"({saved_machine(config)}): rebuild the config with machine_for_restore"
            )
        vm = cls(config, run_dir, accel=accel, socket_dir=socket_dir)
        vm._spawn(incoming=True)
        qmp = vm._require_qmp()
        stream = f"tail -c +{stream_offset + 1} {shlex.quote(str(snapshot.state_path))}"
        try:
            qmp.execute("migrate-set-capabilities", {"capabilities": [_IGNORE_SHARED]})
            qmp.execute("migrate-incoming", {"uri": f"exec:{stream}"})
            vm._wait_migration("restore")
            qmp.execute("cont")
        except EmberError as exc:
            exited = vm._exits_within(_GIVE_UP_EXIT_S)
            diagnosis = vm._diagnosis()
            vm.stop()
            if exited:  # QEMU gave up on the stream: say that, not what it did to the QMP socket
                raise VmError(
                    f"QEMU could not restore {snapshot.state_path} and exited; {diagnosis}; the snapfile "
                    "is truncated or corrupt, or was saved by a QEMU that differs from this one"
                ) from exc
            raise
        except BaseException:
            vm.stop()
            raise
        vm._state = VmState.RUNNING
        return vm

    def boot(self) -> None:
        require_state(self.name, self.state, "boot", VmState.CREATED)
        self._spawn(incoming=False)
        self._state = VmState.RUNNING

    def pause(self) -> None:
        require_state(self.name, self.state, "pause", VmState.RUNNING)
        self._require_qmp().execute("stop")
        self._state = VmState.PAUSED

    def resume(self) -> None:
        require_state(self.name, self.state, "resume", VmState.PAUSED)
        self._require_qmp().execute("cont")
        self._state = VmState.RUNNING

    def snapshot(self, state_path: Path) -> VmSnapshot:
        require_state(self.name, self.state, "snapshot", VmState.PAUSED)
        memory = self.config.memory_file
        if memory is None or not memory.shared:
            raise VmError(
                "cannot snapshot: guest RAM is not in a shared memory file; boot with "
                "MachineConfig.memory_file=MemoryFileConfig(path, shared=True)"
            )
        write_header(state_path, saved_machine(self.config))
        qmp = self._require_qmp()
        qmp.execute("migrate-set-capabilities", {"capabilities": [_IGNORE_SHARED]})
        qmp.execute("migrate", {"uri": f"exec:cat >> {shlex.quote(str(state_path))}"})
        self._wait_migration("snapshot")
        return VmSnapshot(
            state_path=state_path, memory_path=memory.path, memory_bytes=self.config.memory_bytes
        )

    def stop(self, timeout_s: float = 5.0) -> int:
        process = self._process
        if process is None:
            self._state = VmState.STOPPED
            return 0
        if process.poll() is None and self._qmp is not None:
            # QEMU may close the socket before replying, or be gone already: the wait decides.
            with contextlib.suppress(EmberError):
                self._qmp.execute("quit", timeout_s=timeout_s)
        try:
            status = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            status = process.wait()
        self._finish()
        return status

    def _spawn(self, *, incoming: bool) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # unix socket paths are capped at 108 bytes and run_dir may be deep: the QMP socket
        # lives in a short directory (the caller's, or a private one under $TMPDIR).
        if self._given_socket_dir is not None:
            qmp_path = self._given_socket_dir / f"qmp-{secrets.token_hex(4)}.sock"
        else:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="ember-qmp-"))
            qmp_path = self._socket_dir / QMP_SOCKET
        self._qmp_path = qmp_path
        argv = qemu_argv(
            self.config,
            accel=self.accel,
            console_path=self.console_path,
            qmp_path=qmp_path,
            incoming=incoming,
        )
        try:
            with (self.run_dir / STDERR_FILE).open("wb") as stderr:
                self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
        except OSError as exc:
            raise VmError(
                f"cannot start {argv[0]}: {exc}; install qemu-system-x86 (scripts/setup.sh)"
            ) from exc
        process = self._process
        try:
            self._qmp = QmpClient.connect(
                qmp_path, _QMP_CONNECT_TIMEOUT_S, alive=lambda: process.poll() is None
            )
        except EmberError as exc:
            self.stop()
            raise VmError(f"QEMU did not come up: {exc}; {self._diagnosis()}") from exc

    def _wait_migration(self, action: str) -> None:
        qmp = self._require_qmp()
        deadline = time.monotonic() + _MIGRATION_TIMEOUT_S
        while True:
            info = qmp.execute("query-migrate")
            status = info.get("status") if isinstance(info, dict) else None
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise VmError(f"QEMU {action} failed: {info.get('error-desc', status)}; {self._diagnosis()}")
            if time.monotonic() >= deadline:
                raise VmError(f"QEMU {action} did not complete within {_MIGRATION_TIMEOUT_S:.0f} s")
            time.sleep(_MIGRATION_POLL_S)

    def _exits_within(self, timeout_s: float) -> bool:
        """Whether QEMU has exited, waiting up to ``timeout_s`` for it."""
        if self._process is None:
            return False
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _require_qmp(self) -> QmpClient:
        if self._qmp is None:
            raise VmError(f"VM {self.name} has no QMP connection: boot it first")
        return self._qmp

    def _finish(self) -> None:
        super()._finish()
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        elif self._qmp_path is not None:
            self._qmp_path.unlink(missing_ok=True)
        self._state = VmState.STOPPED

    def _diagnosis(self) -> str:
        console = self._console_text().strip().splitlines()[-5:]
        try:
            stderr = (self.run_dir / STDERR_FILE).read_text(errors="replace").strip().splitlines()[-3:]
        except FileNotFoundError:
            stderr = []
        parts = [f"console {self.console_path}: " + (" | ".join(console) if console else "(empty)")]
        if stderr:
            parts.append("qemu: " + " | ".join(stderr))
        return "; ".join(parts)


_IGNORE_SHARED = {"capability": "x-ignore-shared", "state": True}

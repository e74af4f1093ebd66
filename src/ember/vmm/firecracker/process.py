"""One Firecracker process running one guest: spawn, configure, console, pause, snapshot, restore, stop.

Files in the VM's run directory (one directory per VM)::

    firecracker.sock     the API socket (removed by ``stop``)
    console.log          the guest's serial port: Firecracker's stdout (truncated at spawn)
    firecracker.log      Firecracker's own log (``--log-path``), quoted in errors
    firecracker.stderr   anything Firecracker prints outside its logger (early panics)

A cold boot sends the configuration in the seed's order: metrics, boot-source, drives,
network-interfaces, mmds config, machine-config, vsock, then ``InstanceStart``. A restore is a
fresh Firecracker that receives only ``PUT /snapshot/load``: the state file names the kernel,
drives, taps and vsock socket, which must therefore be at the same paths (taps in the same
network namespace) when it is loaded.

Memory: a ``Full`` snapshot writes all guest RAM to its memory file; a ``Diff`` snapshot writes
only the pages dirtied since the previous snapshot into a sparse file of the full size (merge
it onto the previous memory file with ``merge_memory_diff``). Diffs need dirty-page tracking:
``MachineConfig.track_dirty_pages`` on a cold boot, ``enable_diff_snapshots`` on a restore.

Guarantee: every spawned Firecracker is reaped. ``stop()`` sends SIGTERM, then SIGKILL after
``timeout_s``, always ``wait()``s, and removes the API and vsock sockets the VM created;
``with FirecrackerVm(...)`` calls it on exit.
"""

from __future__ import annotations

import contextlib
import shlex
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from ember.errors import EmberError, VmError
from ember.vmm.base import VmSnapshot, VmState, require_state
from ember.vmm.firecracker.api import FirecrackerApi
from ember.vmm.firecracker.config import (
    FirecrackerConfig,
    MemoryBackend,
    MemoryBackendType,
    SnapshotCreate,
    SnapshotLoad,
    SnapshotType,
)
from ember.vmm.process import VmProcess

API_SOCKET = "firecracker.sock"
LOG_FILE = "firecracker.log"
STDERR_FILE = "firecracker.stderr"
MEMORY_SUFFIX = ".mem"
_SOCKET_TIMEOUT_S = 10.0
_POLL_INTERVAL_S = 0.005


class FirecrackerVm(VmProcess):
    """A Firecracker guest; see ``ember.vmm.base.Vm`` for the state machine it follows.

    ``netns`` runs Firecracker inside that network namespace (``ip netns exec``), where the
    taps of ``config.network_interfaces`` must exist.
    """

    vmm_name = "Firecracker"

    def __init__(
        self,
        config: FirecrackerConfig | None,
        run_dir: Path,
        *,
        binary: Path,
        netns: str | None = None,
        name: str | None = None,
        sandbox_dir: Path | None = None,
        sandbox_links: Mapping[str, Path] | None = None,
    ) -> None:
        super().__init__(name or (config.name if config is not None else "ember"), run_dir)
        self.config = config
        self.binary = binary
        self.netns = netns
        self.sandbox_dir = sandbox_dir
        self.sandbox_links = dict(sandbox_links or {})
        self.memory_bytes = config.machine.memory_bytes if config is not None else 0
        self.api = FirecrackerApi(run_dir / API_SOCKET)
        self._owned_sockets: list[Path] = []

    @classmethod
    def restore(
        cls,
        snapshot: VmSnapshot,
        run_dir: Path,
        *,
        binary: Path,
        netns: str | None = None,
        memory_backend: MemoryBackend | None = None,
        enable_diff_snapshots: bool = False,
        resume: bool = True,
        load_timeout_s: float = 30.0,
        name: str = "ember",
        sandbox_dir: Path | None = None,
        sandbox_links: Mapping[str, Path] | None = None,
    ) -> FirecrackerVm:
        """A new Firecracker continuing the guest saved in ``snapshot`` (-> RUNNING, or PAUSED).

        RAM comes from ``snapshot.memory_path`` mapped privately (the file is never written),
        unless ``memory_backend`` names another source, e.g. a ``Uffd`` page server's socket:
        with ``resume`` the load returns only once that server serves the vCPUs' first
        faults, so it must be running before this is called, or the load times out.
        ``enable_diff_snapshots`` lets this VM take Diff snapshots relative to the snapshot.
        ``sandbox_links`` puts links at the paths the snapshot baked in (see ``_spawn``).
        """
        backend = memory_backend or MemoryBackend(MemoryBackendType.FILE, snapshot.memory_path)
        vm = cls(
            None,
            run_dir,
            binary=binary,
            netns=netns,
            name=name,
            sandbox_dir=sandbox_dir,
            sandbox_links=sandbox_links,
        )
        vm.memory_bytes = snapshot.memory_bytes
        vm._spawn()
        try:
            vm.api.load_snapshot(
                SnapshotLoad(
                    snapshot_path=snapshot.state_path,
                    mem_backend=backend,
                    enable_diff_snapshots=enable_diff_snapshots,
                    resume_vm=resume,
                ),
                timeout_s=load_timeout_s,
            )
            vsock = vm.api.vm_config().get("vsock")
            if isinstance(vsock, dict) and isinstance(vsock.get("uds_path"), str):
                vm._owned_sockets.append(Path(vsock["uds_path"]))
        except EmberError as exc:
            diagnosis = vm._diagnosis()
            vm.stop()
            raise VmError(f"cannot restore {snapshot.state_path}: {exc}; {diagnosis}") from exc
        except BaseException:
            vm.stop()
            raise
        vm._state = VmState.RUNNING if resume else VmState.PAUSED
        return vm

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_FILE

    def boot(self) -> None:
        require_state(self.name, self.state, "boot", VmState.CREATED)
        config = self.config
        if config is None:
            raise VmError(f"cannot boot VM {self.name}: it has no config (restored VMs are already running)")
        self._spawn()
        try:
            self._configure(config)
            self.api.start_instance()
        except EmberError as exc:
            diagnosis = self._diagnosis()
            self.stop()
            raise VmError(f"Firecracker VM {self.name} did not start: {exc}; {diagnosis}") from exc
        except BaseException:
            self.stop()
            raise
        self._state = VmState.RUNNING

    def pause(self) -> None:
        require_state(self.name, self.state, "pause", VmState.RUNNING)
        self.api.pause_vm()
        self._state = VmState.PAUSED

    def resume(self) -> None:
        require_state(self.name, self.state, "resume", VmState.PAUSED)
        self.api.resume_vm()
        self._state = VmState.RUNNING

    def snapshot(
        self,
        state_path: Path,
        memory_path: Path | None = None,
        kind: SnapshotType = SnapshotType.FULL,
    ) -> VmSnapshot:
        """Save the paused guest: device state to ``state_path``, RAM to ``memory_path``.

        ``memory_path`` defaults to ``state_path`` + ``.mem``. For ``kind=DIFF`` the memory
        file holds only the pages dirtied since the previous snapshot (or the restore).
        """
        require_state(self.name, self.state, "snapshot", VmState.PAUSED)
        memory = memory_path or state_path.with_name(state_path.name + MEMORY_SUFFIX)
        self.api.create_snapshot(SnapshotCreate(state_path, memory, kind))
        return VmSnapshot(state_path=state_path, memory_path=memory, memory_bytes=self.memory_bytes)

    def stop(self, timeout_s: float = 5.0) -> int:
        process = self._process
        if process is None:
            self._finish()
            return 0
        if process.poll() is None:
            process.terminate()
        try:
            status = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            status = process.wait()
        self._finish()
        return status

    def _spawn(self) -> None:
        if not self.binary.is_file():
            raise VmError(
                f"cannot start {self.binary}: no such file; provision Firecracker "
                "(ember.vmm.firecracker.provision_firecracker) or set FIRECRACKER_VERSIONS_DIR"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        api_socket = self.run_dir / API_SOCKET
        api_socket.unlink(missing_ok=True)
        self._owned_sockets.append(api_socket)
        self.log_path.write_bytes(b"")  # Firecracker refuses a --log-path that does not exist
        argv = [str(self.binary), "--api-sock", str(api_socket), "--log-path", str(self.log_path)]
        argv += ["--level", "Info"]
        argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]  # see ember.vmm.process: the spawning rule
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        if self.sandbox_dir is not None and self.sandbox_links:
            argv = self._in_sandbox_dir(self.sandbox_dir, argv)
        try:
            with (
                self.console_path.open("wb") as console,
                (self.run_dir / STDERR_FILE).open("wb") as stderr,
            ):
                self._process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=console, stderr=stderr
                )
        except OSError as exc:
            raise VmError(
                f"cannot start {argv[0]}: {exc}; provision Firecracker "
                "(ember.vmm.firecracker.provision_firecracker) and install iproute2 for netns"
            ) from exc
        try:
            self._wait_for_socket(api_socket)
        except EmberError as exc:
            diagnosis = self._diagnosis()
            self.stop()
            raise VmError(f"Firecracker did not come up: {exc}; {diagnosis}") from exc
        except BaseException:
            self.stop()
            raise

    def _in_sandbox_dir(self, sandbox_dir: Path, argv: list[str]) -> list[str]:
        """``argv`` in a private mount namespace whose tmpfs at ``sandbox_dir`` holds the links.

        A snapshot names its drives and kernel by path ($SANDBOX_DIR/rootfs.ext4, facts
        5.1); giving each Firecracker its own SANDBOX_DIR lets every sandbox's snapshot find
        its own disk at the same path. Every step is ``exec``: the chain stays one process,
        so the pdeathsig set last still belongs to the thread that started it.
        """
        steps = ["set -e", "mount --make-rprivate /", 'mount -t tmpfs tmpfs "$0" -o X-mount.mkdir']
        for name, target in sorted(self.sandbox_links.items()):
            link = shlex.quote(name)
            steps.append(f'mkdir -p "$0"/"$(dirname {link})"; ln -s {shlex.quote(str(target))} "$0"/{link}')
        steps.append('exec "$@"')
        return ["unshare", "-m", "--", "sh", "-c", "; ".join(steps), str(sandbox_dir), *argv]

    def _wait_for_socket(self, path: Path) -> None:
        deadline = time.monotonic() + _SOCKET_TIMEOUT_S
        while True:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(path))
                    return
                except OSError as exc:
                    process = self._process
                    if process is None or process.poll() is not None:
                        raise VmError(f"Firecracker exited before opening {path}") from exc
                    if time.monotonic() >= deadline:
                        raise VmError(f"{path} did not accept within {_SOCKET_TIMEOUT_S:.0f} s") from exc
            time.sleep(_POLL_INTERVAL_S)

    def _configure(self, config: FirecrackerConfig) -> None:
        if config.metrics is not None:
            self.api.put_metrics(config.metrics)
        self.api.put_boot_source(config.boot_source)
        for drive in config.drives:
            self.api.put_drive(drive)
        for interface in config.network_interfaces:
            self.api.put_network_interface(interface)
        if config.mmds is not None:
            self.api.put_mmds_config(config.mmds)
        self.api.put_machine_config(config.machine)
        if config.vsock is not None:
            self.api.put_vsock(config.vsock)
            self._owned_sockets.append(config.vsock.uds_path)

    def _finish(self) -> None:
        super()._finish()
        for path in self._owned_sockets:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._owned_sockets.clear()

    def _diagnosis(self) -> str:
        console = self._console_text().strip().splitlines()[-3:]
        parts = [f"console {self.console_path}: " + (" | ".join(console) if console else "(empty)")]
        for path in (self.log_path, self.run_dir / STDERR_FILE):
            try:
                lines = path.read_text(errors="replace").strip().splitlines()
            except FileNotFoundError:
                continue
            # Firecracker logs every API call at Info; the errors are what explain a failure.
            wanted = [line for line in lines if "ERROR" in line or "Error" in line][-3:] or lines[-2:]
            if wanted:
                parts.append(f"{path.name}: " + " | ".join(wanted))
        return "; ".join(parts)

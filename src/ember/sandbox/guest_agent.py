"""How the host reaches a guest's envd: a network slot, the guest's NIC, and a ready client.

The guest is always 169.254.0.21 behind ``tap0`` in the slot's namespace (the original's
addressing, baked into every snapshot); the host reaches envd at the slot's host address,
through the NAT the slot sets up. Leaving the ``with`` block removes the slot.
"""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ember.envd.client import EnvdClient
from ember.errors import VmError
from ember.guest import ENVD_PORT
from ember.network import Slot, SlotPool
from ember.vmm.kernel_args import ip_arg
from ember.vmm.qemu import NicConfig, QemuVm

HEALTH_POLL_S = 0.005


@dataclass(frozen=True)
class GuestAgent:
    slot: Slot

    @classmethod
    @contextlib.contextmanager
    def network(cls, progress: Callable[[str], None]) -> Iterator[GuestAgent]:
        with SlotPool() as pool:
            slot = pool.acquire()
            try:
                progress(f"✓ Network slot {slot.idx}: {slot.namespace}, guest reachable at {slot.host_ip}")
                yield cls(slot)
            finally:
                pool.release(slot)

    @property
    def ip_arg(self) -> str:
        return ip_arg(str(self.slot.guest_ip), str(self.slot.tap_ip))

    @property
    def nics(self) -> tuple[NicConfig, ...]:
        return (NicConfig(tap=self.slot.tap, mac=self.slot.guest_mac),)

    @property
    def netns(self) -> str:
        return self.slot.namespace

    @property
    def base_url(self) -> str:
        return f"http://{self.slot.host_ip}:{ENVD_PORT}"

    def connect(self, timeout_s: float, vm: QemuVm, access_token: str | None = None) -> EnvdClient:
        """Wait until envd answers (while the VM is alive), then deliver /init with the host's time."""
        client = EnvdClient(self.base_url, access_token=access_token)
        deadline = time.monotonic() + timeout_s
        while not client.health():
            vm.check_alive()
            if time.monotonic() >= deadline:
                raise VmError(
                    f"envd in the guest did not answer at {self.base_url} within {timeout_s:.0f} s; "
                    f"the guest console ends: {vm.console_tail()}"
                )
            time.sleep(HEALTH_POLL_S)
        client.init(access_token=access_token, timestamp=datetime.datetime.now(datetime.UTC))
        return client

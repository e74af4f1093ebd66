"""Virtual machine monitors behind one interface (``Vm``): QEMU now, Firecracker later.

On this project's hosts only QEMU runs a real Linux guest (TCG when KVM is PVM), so
``ember.vmm.qemu`` is the driver end-to-end tests use.
"""

from ember.vmm.base import Vm, VmSnapshot, VmState

__all__ = ["Vm", "VmSnapshot", "VmState"]

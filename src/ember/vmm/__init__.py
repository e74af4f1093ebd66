"""Virtual machine monitors behind one interface (``Vm``): QEMU and Firecracker.

On this project's hosts only QEMU runs a real Linux guest (TCG when KVM is PVM), so
``ember.vmm.qemu`` is the driver the sandboxes use here; ``ember.vmm.firecracker`` drives
Firecracker's API (toy guests here, Linux guests where KVM can run them).
``choose_vmm`` picks between them and says why.
"""

from ember.vmm.base import Vm, VmSnapshot, VmState
from ember.vmm.select import VmmChoice, VmmName, choose_vmm

__all__ = ["Vm", "VmSnapshot", "VmState", "VmmChoice", "VmmName", "choose_vmm"]

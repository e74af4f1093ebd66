"""The errors sandbox networking raises, both ``EmberError`` subclasses.

::

    EmberError
    └── NetworkError      a slot could not be created, removed or reclaimed
        └── SlotBusy      the slot's namespace or host veth already exists
"""

from __future__ import annotations

from ember.errors import EmberError


class NetworkError(EmberError):
    """A network slot (namespace, links, routes, NAT rules) could not be set up or torn down."""


class SlotBusy(NetworkError):
    """Slot ``idx`` is held by something else: its namespace or host veth already exists.

    A pool skips such a slot and tries the next index; a leftover of a crashed ember is
    removed by ``reclaim_leftovers`` at startup.
    """

    def __init__(self, idx: int, what: str) -> None:
        self.idx = idx
        self.what = what
        super().__init__(
            f"network slot {idx} is busy: {what} already exists; another ember process owns it, "
            "or a crashed one left it behind (ember.network.reclaim_leftovers() removes those)"
        )

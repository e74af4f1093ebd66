"""Copy-on-write block devices: a sandbox's writable rootfs and its export as a diff build.

``Overlay`` serves reads and writes (the NBD server's backend), ``BlockTracker`` records
which blocks it owns, ``CowCache`` holds their bytes, and ``export_diff`` /
``export_rootfs_build`` turn the result into a diff layer of the build it was opened on.
"""

from ember.block.cache import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, CowCache
from ember.block.export import dirty_runs, export_diff, export_rootfs_build, pack_blocks
from ember.block.overlay import STRIPE_BLOCKS, STRIPE_LOCKS, BaseDevice, Overlay, ZeroDevice
from ember.block.tracker import BlockState, BlockTracker, state_runs

__all__ = [
    "FALLOC_FL_KEEP_SIZE",
    "FALLOC_FL_PUNCH_HOLE",
    "STRIPE_BLOCKS",
    "STRIPE_LOCKS",
    "BaseDevice",
    "BlockState",
    "BlockTracker",
    "CowCache",
    "Overlay",
    "ZeroDevice",
    "dirty_runs",
    "export_diff",
    "export_rootfs_build",
    "pack_blocks",
    "state_runs",
]

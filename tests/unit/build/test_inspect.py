"""``inspect_header`` on a filesystem-only build, which has a rootfs and no memfile."""

from __future__ import annotations

import uuid

import pytest

from ember.build.gc.synthetic import write_synthetic_build
from ember.build.inspect import inspect_header
from ember.errors import BuildError
from ember.storage import MEMFILE, ROOTFS, MemoryStorage


def test_a_filesystem_only_build_says_so_for_its_memfile_and_shows_its_rootfs() -> None:
    storage = MemoryStorage()
    build = write_synthetic_build(storage, uuid.uuid4(), None, seed=3, filesystem_only=True)
    with pytest.raises(BuildError, match="filesystem-only: it has no memfile"):
        inspect_header(storage, build.build_id, MEMFILE)
    assert inspect_header(storage, build.build_id, ROOTFS).header.metadata.build_id == build.build_id

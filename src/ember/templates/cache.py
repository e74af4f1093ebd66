"""The template layer cache and the uploaded files of COPY steps, in the node's storage.

Layout (the original's build-cache layout, facts 1.5, under a ``build-cache/`` prefix of the
build storage so one storage location holds everything)::

    build-cache/{scope}/index/{layer hash}     {"template": {"build_id": "<uuid>"}}
    build-cache/{scope}/files/{files hash}.tar the tar the SDK uploaded for a COPY step

An index entry is trusted only while the build it names is complete (its metadata.json
exists): a layer whose build was garbage-collected is simply built again. Entries are
written after their build is complete, so an entry never names a half-written build.
"""

from __future__ import annotations

import json
import re
import uuid

from ember.storage import BuildPaths, Storage

CACHE_PREFIX = "build-cache"
DEFAULT_SCOPE = "default"
_SCOPE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def scope_of(cache_scope: str) -> str:
    """The cache scope a build uses: the one asked for, else the default.

    Not the team's when none is asked for: the file upload that precedes a build names no team,
    so its files and the build would land in different scopes. The API sends the team id.
    """
    scope = cache_scope or DEFAULT_SCOPE
    return scope if _SCOPE.fullmatch(scope) and scope not in (".", "..") else DEFAULT_SCOPE


def files_key(scope: str, files_hash: str) -> str:
    return f"{CACHE_PREFIX}/{scope}/files/{files_hash}.tar"


class LayerCache:
    """Layer hash -> build id, for one scope of one storage."""

    def __init__(self, storage: Storage, scope: str) -> None:
        self.storage = storage
        self.scope = scope

    def _key(self, layer: str) -> str:
        return f"{CACHE_PREFIX}/{self.scope}/index/{layer}"

    def lookup(self, layer: str) -> uuid.UUID | None:
        """The complete build made for ``layer``, or None (never cached, unreadable, or gone)."""
        key = self._key(layer)
        if not self.storage.exists(key):
            return None
        try:
            entry = json.loads(self.storage.get(key))
            build = uuid.UUID(str(entry["template"]["build_id"]))
        except (ValueError, KeyError, TypeError):
            return None
        return build if self.storage.exists(BuildPaths(build).metadata) else None

    def record(self, layer: str, build: uuid.UUID) -> None:
        self.storage.put(self._key(layer), json.dumps({"template": {"build_id": str(build)}}).encode())

    def has_files(self, files_hash: str) -> bool:
        return self.storage.exists(files_key(self.scope, files_hash))

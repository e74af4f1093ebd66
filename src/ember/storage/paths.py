"""Every object name of a build, in one place (facts file 1.1).

::

    {build}/memfile              memory diff data (+ .zstd / .lz4 when compressed)
    {build}/memfile.header       memfile mapping header (never suffixed)
    {build}/rootfs.ext4          rootfs diff data   (+ .zstd / .lz4 when compressed)
    {build}/rootfs.ext4.header   rootfs mapping header (never suffixed)
    {build}/snapfile             VMM device state
    {build}/metadata.json        template metadata, written last
    {build}/.ember-claim         who claimed the build id, created exclusively before any other
                                 object (ember's own; no tool treats it as part of the build)

Keys have no ``templates/`` prefix: the CLI's local layout adds it to the directory,
not to the key (see ``open_storage``).
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from ember.errors import UsageError

MEMFILE = "memfile"
ROOTFS = "rootfs.ext4"
SNAPFILE = "snapfile"
METADATA = "metadata.json"
CLAIM = ".ember-claim"
HEADER_SUFFIX = ".header"

DATA_FILES = (MEMFILE, ROOTFS)

# Compression type codes as stored in V4+ headers (facts file 2.3): 0 none, 1 zstd, 2 lz4.
_COMPRESSION_SUFFIXES = {0: "", 1: ".zstd", 2: ".lz4"}


def data_file_name(file_name: str, compression: int) -> str:
    """``memfile`` / ``rootfs.ext4`` with the suffix its compression code adds."""
    if file_name not in DATA_FILES:
        raise UsageError(f"{file_name!r} is not a data file: use {MEMFILE!r} or {ROOTFS!r}")
    suffix = _COMPRESSION_SUFFIXES.get(compression)
    if suffix is None:
        raise UsageError(f"unknown compression code {compression}: use 0 (none), 1 (zstd) or 2 (lz4)")
    return file_name + suffix


@dataclass(frozen=True)
class BuildPaths:
    """The storage keys of one build; accepts a UUID or its canonical lower-case string."""

    build_id: str

    def __init__(self, build_id: UUID | str) -> None:
        try:
            canonical = str(UUID(str(build_id)))
        except ValueError as exc:
            raise UsageError(f"invalid build id {build_id!r}: expected a UUID") from exc
        object.__setattr__(self, "build_id", canonical)

    def key(self, file_name: str) -> str:
        return f"{self.build_id}/{file_name}"

    @property
    def prefix(self) -> str:
        """Prefix shared by every object of this build (for list / delete_prefix)."""
        return f"{self.build_id}/"

    @property
    def memfile(self) -> str:
        return self.key(MEMFILE)

    @property
    def memfile_header(self) -> str:
        return self.key(MEMFILE + HEADER_SUFFIX)

    @property
    def rootfs(self) -> str:
        return self.key(ROOTFS)

    @property
    def rootfs_header(self) -> str:
        return self.key(ROOTFS + HEADER_SUFFIX)

    @property
    def snapfile(self) -> str:
        return self.key(SNAPFILE)

    @property
    def metadata(self) -> str:
        return self.key(METADATA)

    @property
    def claim(self) -> str:
        """The marker a writer creates exclusively to own this build id (``claim_build``)."""
        return self.key(CLAIM)

    def header(self, file_name: str) -> str:
        """Header key of a data file (``memfile`` or ``rootfs.ext4``); never compressed."""
        data_file_name(file_name, 0)
        return self.key(file_name + HEADER_SUFFIX)

    def data_object(self, file_name: str, compression: int = 0) -> str:
        """Data object key of ``memfile`` / ``rootfs.ext4`` for a compression code."""
        return self.key(data_file_name(file_name, compression))

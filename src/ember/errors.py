"""The exceptions ember raises, and the only ones its library code lets escape.

Every error a user can cause or meet carries the data that explains it and builds a
message from that data saying what is wrong and what to do about it. Foreign
exceptions (OSError, google-cloud-storage, botocore, lz4) are converted where the
foreign library is called, with ``raise ... from exc`` so the root cause stays.

Hierarchy::

    EmberError
    ├── UsageError            bad flags or arguments (the CLI exits 2)
    ├── HeaderError           header bytes that cannot be decoded or encoded
    ├── MappingError          a mapping list that is malformed or does not cover an offset
    ├── MetadataError         metadata.json that cannot be decoded
    ├── BuildError            a build that is missing, incomplete or inconsistent
    ├── GuestError            a guest kernel, initramfs or root filesystem cannot be assembled
    ├── VmError               a VM failed to boot, pause, snapshot, restore or stop
    └── StorageError          a storage backend failed
        ├── ObjectNotFound    the object does not exist
        ├── ObjectExists      an exclusive create found the object already there
        └── StorageUnreachable the backend cannot be reached or refused access

The CLI catches ``EmberError`` once, prints ``ember <subcommand>: <message>`` and exits 1.
"""

from __future__ import annotations


class EmberError(Exception):
    """Root of every error ember raises on purpose."""


class UsageError(EmberError):
    """A command was called with flags or arguments that cannot work together."""


class HeaderError(EmberError):
    """Header bytes are truncated, corrupt, or describe an impossible device."""


class MappingError(EmberError):
    """A mapping list is malformed (gaps, overlaps, misalignment) or cannot resolve an offset."""


class MetadataError(EmberError):
    """metadata.json cannot be decoded into a template metadata record."""


class BuildError(EmberError):
    """A build is missing, incomplete, or inconsistent with what references it."""


class GuestError(EmberError):
    """A guest kernel, initramfs or root filesystem cannot be provisioned or assembled."""


class VmError(EmberError):
    """A VM failed to boot, pause, snapshot, restore or stop, or was asked to in the wrong state."""


class StorageError(EmberError):
    """A storage backend failed to read, write, list or delete."""


class ObjectNotFound(StorageError):
    """The object does not exist in the storage it was looked up in."""

    def __init__(self, key: str, storage_url: str) -> None:
        self.key = key
        self.storage_url = storage_url
        super().__init__(
            f"object {key!r} not found in {storage_url}: check the build id and the -storage location"
        )


class ObjectExists(StorageError):
    """An exclusive create found an object under the key: another writer stored it first."""

    def __init__(self, key: str, storage_url: str) -> None:
        self.key = key
        self.storage_url = storage_url
        super().__init__(
            f"object {key!r} already exists in {storage_url}: another writer created it first; "
            "use a new key (for a build, a new build id) or delete the existing object"
        )


class StorageUnreachable(StorageError):
    """The backend could not be reached, or refused the credentials it was given."""

    def __init__(self, storage_url: str, cause: str) -> None:
        self.storage_url = storage_url
        self.cause = cause
        super().__init__(
            f"cannot reach {storage_url}: {cause}; check the bucket name, the endpoint "
            "(STORAGE_EMULATOR_HOST / AWS_ENDPOINT_URL) and the credentials"
        )

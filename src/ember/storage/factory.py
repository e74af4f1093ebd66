"""Turn a storage URL, as given to ``-storage``, into a ``Storage``.

Accepted forms::

    /some/dir  or  some/dir     LocalStorage at <dir>/templates  (CLI layout, facts file 1.1)
    file:///abs/dir             LocalStorage at /abs/dir, used as is
    gs://bucket[/prefix]        GcsStorage   (STORAGE_EMULATOR_HOST honoured)
    s3://bucket[/prefix]        S3Storage    (AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 honoured)
    memory://name               the process-wide in-memory store called name

The cloud SDKs are imported only when their scheme is used, so local commands start
without paying for google-cloud-storage and boto3 imports.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from ember.errors import UsageError
from ember.storage.base import Storage
from ember.storage.local import LocalStorage
from ember.storage.memory import open_memory_storage

TEMPLATES_DIR = "templates"

_ACCEPTED = "a directory, file:///abs/dir, gs://bucket[/prefix], s3://bucket[/prefix] or memory://name"


def open_storage(url: str) -> Storage:
    """The storage ``url`` names; raises ``UsageError`` for a form not listed in the module doc."""
    if not url:
        raise UsageError(f"empty storage location: use {_ACCEPTED}")
    if "://" not in url:
        return LocalStorage(Path(url) / TEMPLATES_DIR)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise UsageError(f"invalid file URL {url!r}: use file:///absolute/dir")
        return LocalStorage(Path(unquote(parts.path)))
    if scheme == "memory":
        return open_memory_storage(parts.netloc + parts.path)
    if scheme in ("gs", "s3"):
        if not parts.netloc:
            raise UsageError(f"missing bucket name in {url!r}: use {scheme}://bucket[/prefix]")
        prefix = parts.path.strip("/")
        if scheme == "gs":
            from ember.storage.gcs import GcsStorage

            return GcsStorage(parts.netloc, prefix)
        from ember.storage.s3 import S3Storage

        return S3Storage(parts.netloc, prefix)
    raise UsageError(f"unsupported storage location {url!r}: use {_ACCEPTED}")

"""Google Cloud Storage backend (google-cloud-storage JSON API client).

Object ``{build}/{file}`` lives at ``gs://<bucket>/<prefix>/{build}/{file}``. Single-object
uploads are atomic in GCS: the object appears only when the upload completes.

Endpoint and credentials: ``STORAGE_EMULATOR_HOST`` (the standard variable the client
library reads), or the ``emulator_host`` argument, points every request at an emulator;
anonymous credentials and a placeholder project are then used. Otherwise Application
Default Credentials are used. The endpoint is read once, at construction, so every
per-thread client talks to the same server.

Failure budget: each HTTP request gets ``connect_timeout_s`` to connect and
``read_timeout_s`` between bytes, and retries of transient errors stop after
``retry_deadline_s``, so an unreachable endpoint fails within seconds.

The client library's ``Client`` shares one HTTP session; each thread gets its own client
(built from credentials resolved once) so concurrent readers never share a session.
"""

from __future__ import annotations

import base64
import builtins
import datetime
import os
import threading
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import google.auth
import google.auth.exceptions
import requests
from google.auth.credentials import AnonymousCredentials

from ember.errors import ObjectExists, ObjectNotFound, StorageError, StorageUnreachable
from ember.storage.base import ObjectInfo, Storage, atomic_write, check_key, check_range

with warnings.catch_warnings():
    # google-api-core warns at import when grpcio is installed (ember's RPC server needs it)
    # without grpcio-status. This backend speaks GCS's JSON API over HTTP, never gRPC.
    warnings.simplefilter("ignore", ImportWarning)
    from google.api_core import exceptions as api_exceptions
    from google.cloud import storage as gcs
    from google.cloud.storage import retry as gcs_retry
    from google.cloud.storage.exceptions import DataCorruption

_EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_EMULATOR_PROJECT = "ember-emulator"
_UPLOAD_CHUNK_SIZE = 32 << 20

_T = TypeVar("_T")


class GcsStorage(Storage):
    """A GCS bucket (optionally under a prefix) as an object store."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 60.0,
        retry_deadline_s: float = 8.0,
        emulator_host: str | None = None,
    ) -> None:
        self._bucket_name = bucket
        self._prefix = prefix.strip("/")
        self._timeout = (connect_timeout_s, read_timeout_s)
        self._retry = gcs_retry.DEFAULT_RETRY.with_delay(initial=0.2, maximum=2.0).with_timeout(
            retry_deadline_s
        )
        self._local = threading.local()
        self._bucket_checked = False
        host = emulator_host or os.environ.get(_EMULATOR_ENV) or None
        self._endpoint = host if host is None or "://" in host else f"http://{host}"
        self._credentials, self._project = self._resolve_credentials()

    @property
    def url(self) -> str:
        return f"gs://{self._bucket_name}/{self._prefix}" if self._prefix else f"gs://{self._bucket_name}"

    def _resolve_credentials(self) -> tuple[Any, str | None]:
        if self._endpoint:
            anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
            return anonymous, os.environ.get("GOOGLE_CLOUD_PROJECT", _EMULATOR_PROJECT)
        try:
            credentials, project = google.auth.default()
        except google.auth.exceptions.GoogleAuthError as exc:
            raise StorageUnreachable(self.url, f"no Google credentials ({exc})") from exc
        return credentials, project

    def _bucket(self) -> Any:
        bucket = getattr(self._local, "bucket", None)
        if bucket is None:
            options = {"api_endpoint": self._endpoint} if self._endpoint else None
            client = gcs.Client(project=self._project, credentials=self._credentials, client_options=options)
            bucket = self._local.bucket = client.bucket(self._bucket_name)
        return bucket

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self._prefix}/{key}" if self._prefix else key

    def _call(self, key: str | None, action: Callable[[], _T]) -> _T:
        """Run one client call, translating its exceptions into ember errors."""
        try:
            return action()
        except api_exceptions.NotFound as exc:
            if key is None or not self._bucket_exists():
                raise StorageUnreachable(self.url, f"bucket {self._bucket_name!r} does not exist") from exc
            raise ObjectNotFound(key, self.url) from exc
        except (api_exceptions.Unauthorized, api_exceptions.Forbidden) as exc:
            raise StorageUnreachable(self.url, f"access refused ({exc.message})") from exc
        except (
            requests.ConnectionError,
            requests.Timeout,
            api_exceptions.RetryError,
            google.auth.exceptions.GoogleAuthError,
        ) as exc:
            raise StorageUnreachable(self.url, str(exc)) from exc
        except (api_exceptions.GoogleAPIError, requests.RequestException, DataCorruption) as exc:
            raise StorageError(f"GCS request to {self.url} failed: {exc}; retry or check the bucket") from exc

    def _bucket_exists(self) -> bool:
        if not self._bucket_checked:
            self._bucket_checked = bool(
                self._call(None, lambda: self._bucket().exists(timeout=self._timeout, retry=self._retry))
            )
        return self._bucket_checked

    def _blob(self, key: str) -> Any:
        return self._bucket().blob(self._name(key), chunk_size=_UPLOAD_CHUNK_SIZE)

    def get(self, key: str) -> bytes:
        blob = self._blob(key)
        data = self._call(key, lambda: blob.download_as_bytes(timeout=self._timeout, retry=self._retry))
        return bytes(data)

    def put(self, key: str, data: bytes) -> None:
        blob = self._blob(key)
        self._call(key, lambda: blob.upload_from_string(data, timeout=self._timeout, retry=self._retry))

    def create_exclusive(self, key: str, data: bytes) -> None:
        """An upload with ``ifGenerationMatch=0``, which GCS refuses (412) once the object exists.

        gcp-storage-emulator ignores preconditions, so the ``exists`` check in front answers
        for it when the object is already there; against GCS the precondition alone decides.
        """
        if self.exists(key):
            raise ObjectExists(key, self.url)
        blob = self._blob(key)
        try:
            self._call(
                key,
                lambda: blob.upload_from_string(
                    data, if_generation_match=0, timeout=self._timeout, retry=self._retry
                ),
            )
        except StorageError as exc:
            if isinstance(exc.__cause__, api_exceptions.PreconditionFailed):
                raise ObjectExists(key, self.url) from exc
            raise

    def put_file(self, key: str, path: Path) -> None:
        blob = self._blob(key)
        if not path.is_file():
            raise StorageError(f"cannot read upload source {path}: not a file; check the path")
        self._call(
            key, lambda: blob.upload_from_filename(str(path), timeout=self._timeout, retry=self._retry)
        )

    def get_to_file(self, key: str, path: Path) -> None:
        blob = self._blob(key)
        atomic_write(
            path,
            lambda target: self._call(
                key, lambda: blob.download_to_file(target, timeout=self._timeout, retry=self._retry)
            ),
        )

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        if length == 0:
            return b""
        blob = self._blob(key)

        def download() -> bytes:
            try:
                return bytes(
                    blob.download_as_bytes(
                        start=offset,
                        end=offset + length - 1,
                        checksum=None,
                        timeout=self._timeout,
                        retry=self._retry,
                    )
                )
            except api_exceptions.RequestRangeNotSatisfiable:
                return b""

        return self._call(key, download)

    def _reloaded(self, key: str) -> Any:
        blob = self._blob(key)
        self._call(key, lambda: blob.reload(timeout=self._timeout, retry=self._retry))
        return blob

    def size(self, key: str) -> int:
        return int(self._reloaded(key).size)

    def exists(self, key: str) -> bool:
        blob = self._blob(key)
        found = bool(self._call(key, lambda: blob.exists(timeout=self._timeout, retry=self._retry)))
        if not found and not self._bucket_exists():
            raise StorageUnreachable(self.url, f"bucket {self._bucket_name!r} does not exist")
        return found

    def _list_names(self, prefix: str) -> list[str]:
        full_prefix = self._name_prefix(prefix)
        bucket = self._bucket()
        blobs = self._call(
            None,
            lambda: [
                blob.name
                for blob in bucket.client.list_blobs(
                    bucket, prefix=full_prefix, timeout=self._timeout, retry=self._retry
                )
            ],
        )
        return sorted(blobs)

    def _name_prefix(self, prefix: str) -> str:
        return f"{self._prefix}/{prefix}" if self._prefix else prefix

    def list(self, prefix: str) -> list[str]:
        skip = len(self._name_prefix(""))
        return [name[skip:] for name in self._list_names(prefix)]

    def list_objects(self, prefix: str) -> builtins.list[ObjectInfo]:
        """One listing call: GCS returns each blob's size and ``updated`` time with its name."""
        skip = len(self._name_prefix(""))
        bucket = self._bucket()

        def collect() -> builtins.list[ObjectInfo]:
            blobs = bucket.client.list_blobs(
                bucket, prefix=self._name_prefix(prefix), timeout=self._timeout, retry=self._retry
            )
            return [
                ObjectInfo(blob.name[skip:], int(blob.size or 0), _timestamp(blob.updated)) for blob in blobs
            ]

        found: builtins.list[ObjectInfo] = self._call(None, collect)
        return sorted(found, key=lambda item: item.key)

    def delete_prefix(self, prefix: str) -> int:
        names = self._list_names(prefix)
        bucket = self._bucket()
        deleted = 0
        for name in names:
            try:
                self._call(name, partial(bucket.delete_blob, name, timeout=self._timeout, retry=self._retry))
            except ObjectNotFound:
                continue
            deleted += 1
        return deleted

    def crc32c(self, key: str) -> int | None:
        encoded = self._reloaded(key).crc32c
        return int.from_bytes(base64.b64decode(encoded), "big") if encoded else None


def _timestamp(moment: object) -> float | None:
    return moment.timestamp() if isinstance(moment, datetime.datetime) else None

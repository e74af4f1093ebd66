"""Amazon S3 (and S3-compatible) backend, through boto3.

Object ``{build}/{file}`` lives at ``s3://<bucket>/<prefix>/{build}/{file}``. A PUT and a
completed multipart upload are both atomic in S3.

Endpoint, region and credentials come from the standard boto3 chain, including
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for S3-compatible servers; explicit
arguments override them.

Checksums: ``put`` and ``put_file`` of files up to ``_SINGLE_PUT_LIMIT`` send a CRC32C
computed locally (google-crc32c, so botocore needs no CRT extra), which S3 keeps as
``ChecksumCRC32C``. Larger files go up in parts and carry only per-part checksums, so
``crc32c`` returns ``None`` for them, as it does for objects uploaded by other tools.

Failure budget: ``connect_timeout_s`` per connection attempt and ``max_attempts`` tries in
botocore's standard retry mode, so an unreachable endpoint fails within seconds.
"""

from __future__ import annotations

import base64
import builtins
import datetime
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

import boto3
import boto3.s3.transfer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from ember.errors import ObjectExists, ObjectNotFound, StorageError, StorageUnreachable
from ember.storage.base import (
    ObjectInfo,
    Storage,
    atomic_write,
    check_key,
    check_range,
    crc32c_of_bytes,
    crc32c_of_file,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_SINGLE_PUT_LIMIT = 512 << 20
_MULTIPART_CHUNK_SIZE = 64 << 20
_MISSING_OBJECT_CODES = {"NoSuchKey", "404", "NotFound"}
_REFUSED_CODES = {
    "NoSuchBucket",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "403",
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
}

_TAKEN_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
"""What S3 answers a conditional PUT whose key exists (409 when a concurrent PUT is in flight)."""

_T = TypeVar("_T")


class S3Storage(Storage):
    """An S3 bucket (optionally under a prefix) as an object store; the boto3 client is thread-safe."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 60.0,
        max_attempts: int = 3,
    ) -> None:
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        session = boto3.session.Session(
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            region_name=region,
        )
        config = Config(
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=32,
        )
        try:
            self._client: S3Client = session.client("s3", endpoint_url=endpoint_url, config=config)
        except BotoCoreError as exc:
            raise StorageUnreachable(self.url, f"cannot configure the S3 client ({exc})") from exc
        self._bucket_lock = threading.Lock()
        self._bucket_checked = False

    @property
    def url(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}" if self._prefix else f"s3://{self._bucket}"

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self._prefix}/{key}" if self._prefix else key

    def _name_prefix(self, prefix: str) -> str:
        return f"{self._prefix}/{prefix}" if self._prefix else prefix

    def _call(self, key: str | None, action: Callable[[], _T]) -> _T:
        """Run one client call, translating its exceptions into ember errors."""
        try:
            return action()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_OBJECT_CODES and key is not None:
                if not self._bucket_exists():
                    raise StorageUnreachable(self.url, f"bucket {self._bucket!r} does not exist") from exc
                raise ObjectNotFound(key, self.url) from exc
            if code in _REFUSED_CODES or code in _MISSING_OBJECT_CODES:
                raise StorageUnreachable(self.url, f"{code}: {exc}") from exc
            raise StorageError(f"S3 request to {self.url} failed: {exc}; retry, or check the bucket") from exc
        except NoCredentialsError as exc:
            raise StorageUnreachable(self.url, "no AWS credentials found") from exc
        except BotoCoreError as exc:
            raise StorageUnreachable(self.url, str(exc)) from exc

    def _bucket_exists(self) -> bool:
        with self._bucket_lock:
            if self._bucket_checked:
                return True
        try:
            self._call(None, lambda: self._client.head_bucket(Bucket=self._bucket))
        except StorageUnreachable:
            return False
        with self._bucket_lock:
            self._bucket_checked = True
        return True

    def get(self, key: str) -> bytes:
        name = self._name(key)
        return self._call(key, lambda: self._client.get_object(Bucket=self._bucket, Key=name)["Body"].read())

    def put(self, key: str, data: bytes) -> None:
        name = self._name(key)
        checksum = _encode_crc32c(crc32c_of_bytes(data))
        self._call(
            key,
            lambda: self._client.put_object(
                Bucket=self._bucket, Key=name, Body=data, ChecksumAlgorithm="CRC32C", ChecksumCRC32C=checksum
            ),
        )

    def create_exclusive(self, key: str, data: bytes) -> None:
        """A PUT with ``If-None-Match: *``, which S3 (and moto) refuse with 412 once the key exists."""
        name = self._name(key)
        checksum = _encode_crc32c(crc32c_of_bytes(data))
        try:
            self._call(
                key,
                lambda: self._client.put_object(
                    Bucket=self._bucket,
                    Key=name,
                    Body=data,
                    IfNoneMatch="*",
                    ChecksumAlgorithm="CRC32C",
                    ChecksumCRC32C=checksum,
                ),
            )
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") in _TAKEN_CODES:
                raise ObjectExists(key, self.url) from exc
            raise

    def put_file(self, key: str, path: Path) -> None:
        name = self._name(key)
        try:
            size_bytes = path.stat().st_size
            if size_bytes > _SINGLE_PUT_LIMIT:
                transfer = boto3.s3.transfer.TransferConfig(
                    multipart_threshold=_SINGLE_PUT_LIMIT, multipart_chunksize=_MULTIPART_CHUNK_SIZE
                )
                self._call(
                    key, lambda: self._client.upload_file(str(path), self._bucket, name, Config=transfer)
                )
                return
            checksum = _encode_crc32c(crc32c_of_file(path))
            with path.open("rb") as source:
                self._call(
                    key,
                    lambda: self._client.put_object(
                        Bucket=self._bucket,
                        Key=name,
                        Body=source,
                        ChecksumAlgorithm="CRC32C",
                        ChecksumCRC32C=checksum,
                    ),
                )
        except OSError as exc:
            raise StorageError(f"cannot read upload source {path}: {exc}; check the path") from exc

    def get_to_file(self, key: str, path: Path) -> None:
        name = self._name(key)

        def fill(target: BinaryIO) -> None:
            self._call(key, lambda: self._client.download_fileobj(self._bucket, name, target))

        atomic_write(path, fill)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        if length == 0:
            return b""
        name = self._name(key)

        def download() -> bytes:
            try:
                response = self._client.get_object(
                    Bucket=self._bucket, Key=name, Range=f"bytes={offset}-{offset + length - 1}"
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                    return b""
                raise
            return response["Body"].read()

        return self._call(key, download)

    def size(self, key: str) -> int:
        name = self._name(key)
        head = self._call(key, lambda: self._client.head_object(Bucket=self._bucket, Key=name))
        return head["ContentLength"]

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def _list_names(self, prefix: str) -> list[str]:
        full_prefix = self._name_prefix(prefix)

        def collect() -> list[str]:
            paginator = self._client.get_paginator("list_objects_v2")
            return [
                item["Key"]
                for page in paginator.paginate(Bucket=self._bucket, Prefix=full_prefix)
                for item in page.get("Contents", [])
            ]

        return sorted(self._call(None, collect))

    def list(self, prefix: str) -> list[str]:
        skip = len(self._name_prefix(""))
        return [name[skip:] for name in self._list_names(prefix)]

    def list_objects(self, prefix: str) -> builtins.list[ObjectInfo]:
        """One listing: ``ListObjectsV2`` returns each key's ``Size`` and ``LastModified``."""
        skip = len(self._name_prefix(""))

        def collect() -> builtins.list[ObjectInfo]:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=self._name_prefix(prefix)
            )
            return [
                ObjectInfo(item["Key"][skip:], int(item["Size"]), _timestamp(item.get("LastModified")))
                for page in pages
                for item in page.get("Contents", [])
            ]

        found: builtins.list[ObjectInfo] = self._call(None, collect)
        return sorted(found, key=lambda item: item.key)

    def delete_prefix(self, prefix: str) -> int:
        names = self._list_names(prefix)
        for start in range(0, len(names), 1000):
            batch = [{"Key": name} for name in names[start : start + 1000]]
            response = self._call(
                None,
                lambda batch=batch: self._client.delete_objects(  # type: ignore[misc]
                    Bucket=self._bucket, Delete={"Objects": batch, "Quiet": True}
                ),
            )
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise StorageError(
                    f"cannot delete {first.get('Key')!r} in {self.url}: {first.get('Message')}; "
                    "check the delete permission"
                )
        return len(names)

    def crc32c(self, key: str) -> int | None:
        name = self._name(key)
        head = self._call(
            key, lambda: self._client.head_object(Bucket=self._bucket, Key=name, ChecksumMode="ENABLED")
        )
        encoded = head.get("ChecksumCRC32C")
        if not encoded or "-" in encoded or head.get("ChecksumType") == "COMPOSITE":
            return None
        return int.from_bytes(base64.b64decode(encoded), "big")


def _encode_crc32c(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode("ascii")


def _timestamp(moment: object) -> float | None:
    return moment.timestamp() if isinstance(moment, datetime.datetime) else None

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ember.errors import UsageError
from ember.storage import LocalStorage, MemoryStorage, open_storage

BUILD = "3c2b1a09-8f7e-4d6c-9b5a-493827161504"


def test_a_plain_directory_gets_the_cli_templates_layout(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path))
    assert isinstance(storage, LocalStorage)
    storage.put(f"{BUILD}/metadata.json", b"{}")
    assert (tmp_path / "templates" / BUILD / "metadata.json").read_bytes() == b"{}"


def test_a_file_url_is_used_as_is(tmp_path: Path) -> None:
    storage = open_storage(tmp_path.as_uri())
    storage.put(f"{BUILD}/snapfile", b"s")
    assert (tmp_path / BUILD / "snapfile").read_bytes() == b"s"
    assert storage.url == tmp_path.as_uri()


def test_memory_urls_with_one_name_share_one_store() -> None:
    first = open_storage("memory://factory-test")
    assert isinstance(first, MemoryStorage)
    first.put(f"{BUILD}/memfile", b"m")
    assert open_storage("memory://factory-test").get(f"{BUILD}/memfile") == b"m"
    assert not open_storage("memory://factory-other").exists(f"{BUILD}/memfile")


@pytest.mark.parametrize(
    "url", ["azblob://container", "http://example.com/x", "", "gs://", "file://relative/dir"]
)
def test_unsupported_locations_are_usage_errors_listing_the_accepted_forms(url: str) -> None:
    with pytest.raises(UsageError) as caught:
        open_storage(url)
    assert "gs://bucket" in str(caught.value) or "file:///" in str(caught.value)


@pytest.mark.emulator
def test_gs_urls_honour_storage_emulator_host(gcs_emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    storage = open_storage(f"gs://{gcs_emulator.bucket}/factory")
    assert storage.url == f"gs://{gcs_emulator.bucket}/factory"
    storage.put(f"{BUILD}/metadata.json", b"gcs")
    assert open_storage(f"gs://{gcs_emulator.bucket}").get(f"factory/{BUILD}/metadata.json") == b"gcs"


@pytest.mark.emulator
def test_s3_urls_honour_aws_endpoint_url(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    storage = open_storage(f"s3://{s3_server.bucket}/factory")
    assert storage.url == f"s3://{s3_server.bucket}/factory"
    storage.put(f"{BUILD}/metadata.json", b"s3")
    assert open_storage(f"s3://{s3_server.bucket}").get(f"factory/{BUILD}/metadata.json") == b"s3"

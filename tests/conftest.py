"""Shared fixtures: GCS and S3 API servers on loopback, started once per session.

Both servers run in threads of the test process on free 127.0.0.1 ports and are stopped
when the session ends. Tests reach them through the ``gcs_emulator`` / ``s3_server``
fixtures, never through process-wide environment variables, so other tests are unaffected.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

EMULATOR_BUCKET = "ember-test"
S3_ACCESS_KEY = "ember-test-key"
S3_SECRET_KEY = "ember-test-secret"
S3_REGION = "us-east-1"


@dataclass(frozen=True)
class Endpoint:
    """Where a loopback API server listens, the bucket created in it, and S3 credentials."""

    url: str
    bucket: str
    access_key: str = S3_ACCESS_KEY
    secret_key: str = S3_SECRET_KEY
    region: str = S3_REGION


def free_port() -> int:
    """A loopback port nothing listens on at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def closed_port_url() -> str:
    """An http URL on loopback where nothing listens: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[Endpoint]:
    """gcp-storage-emulator (in memory) with one bucket."""
    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=EMULATOR_BUCKET)
    server.start()
    try:
        yield Endpoint(f"http://127.0.0.1:{port}", EMULATOR_BUCKET)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Endpoint]:
    """moto's threaded S3 server with one bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=url,
            region_name=S3_REGION,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
        )
        client.create_bucket(Bucket=EMULATOR_BUCKET)
        yield Endpoint(url, EMULATOR_BUCKET)
    finally:
        server.stop()

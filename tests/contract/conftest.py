"""Object-store backends for the contract suite: a local directory, and S3 served by moto on loopback.

Each test gets a fresh, empty store wrapped in ``RetryingObjectStore`` (as the application wires it).
No AWS setting of the machine (environment, ~/.aws files, endpoint overrides) may reach the tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from duckmesh.storage.local import LocalObjectStore
from duckmesh.storage.retry import RetryingObjectStore
from duckmesh.storage.s3 import S3ObjectStore
from tests.conftest import free_port

REGION = "us-east-1"
DUMMY_SECRET = "testing"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """An S3 endpoint (moto server) on 127.0.0.1 for the whole test session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def isolated_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials and no shared config, so a developer's AWS setup never leaks in."""
    for name in [n for n in os.environ if n.startswith(("AWS_", "BOTO_"))]:
        monkeypatch.delenv(name)
    missing = str(tmp_path / "no-aws-config")
    monkeypatch.setenv("AWS_CONFIG_FILE", missing)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DUMMY_SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)


def _s3_store(endpoint: str) -> S3ObjectStore:
    bucket = f"dm-contract-{uuid.uuid4().hex[:12]}"
    admin = boto3.client(
        "s3", endpoint_url=endpoint, region_name=REGION,
        aws_access_key_id=DUMMY_SECRET, aws_secret_access_key=DUMMY_SECRET,
    )
    admin.create_bucket(Bucket=bucket)
    return S3ObjectStore(
        f"s3://{bucket}/some/prefix", endpoint_url=endpoint, region=REGION,
        access_key_id=DUMMY_SECRET, secret_access_key=DUMMY_SECRET,
    )


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def object_store(request: pytest.FixtureRequest, tmp_path: Path, isolated_aws_env: None) -> RetryingObjectStore:
    """A fresh, empty store of each backend, wrapped the way the application wraps it."""
    if request.param == "file":
        inner: LocalObjectStore | S3ObjectStore = LocalObjectStore((tmp_path / "objects").as_uri())
    else:
        inner = _s3_store(request.getfixturevalue("moto_endpoint"))
    return RetryingObjectStore(inner, attempts=3, base_delay=0.001)

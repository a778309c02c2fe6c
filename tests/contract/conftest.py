"""Object-store backends for the contract suite: a local directory, and S3 served by moto on loopback
(``moto_endpoint`` and ``isolated_aws_env`` live in tests/conftest.py, shared with the acceptance run).

Each test gets a fresh, empty store wrapped in ``RetryingObjectStore`` (as the application wires it).
No AWS setting of the machine (environment, ~/.aws files, endpoint overrides) may reach the tests.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import pytest

from duckmesh.storage.local import LocalObjectStore
from duckmesh.storage.retry import RetryingObjectStore
from duckmesh.storage.s3 import S3ObjectStore
from tests.conftest import DUMMY_SECRET, REGION


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

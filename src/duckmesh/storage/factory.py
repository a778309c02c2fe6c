"""Build the configured object store from its URL."""

from __future__ import annotations

from duckmesh.config import Settings
from duckmesh.errors import ConfigError
from duckmesh.storage.base import ObjectStore
from duckmesh.storage.retry import RetryingObjectStore


def open_object_store(settings: Settings) -> RetryingObjectStore:
    url = settings.resolved_object_store_url
    inner: ObjectStore
    if url.startswith("file://"):
        from duckmesh.storage.local import LocalObjectStore

        inner = LocalObjectStore(url)
    elif url.startswith("s3://"):
        from duckmesh.storage.s3 import S3ObjectStore

        inner = S3ObjectStore(
            url,
            endpoint_url=settings.s3_endpoint,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
        )
    else:
        raise ConfigError("DUCKMESH_OBJECT_STORE_URL must start with file:// or s3://")
    return RetryingObjectStore(
        inner, attempts=settings.storage_retry_attempts, base_delay=settings.storage_retry_base_delay_ms / 1000
    )

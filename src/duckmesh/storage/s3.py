"""S3-compatible object store (``s3://bucket/prefix``) through boto3; a single PUT is atomic."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from duckmesh.errors import ObjectNotFound, StorageError, TransientStorageError
from duckmesh.storage.base import ObjectInfo, check_key, check_prefix

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
# "403" is what a HEAD request (which has no error body) reports for AccessDenied.
_PERMANENT = {
    "403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "InvalidBucketName",
}


class S3ObjectStore:
    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StorageError("S3 object store needs s3://bucket[/prefix]")
        self.url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            # Retries are ours (RetryingObjectStore) so that backoff and metrics are uniform. A custom
            # endpoint (MinIO, moto, ...) is addressed path-style: bucket.host names rarely resolve there.
            config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30,
                          s3={"addressing_style": "path" if endpoint_url else "auto"}),
        )

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _translate(self, exc: Exception, key: str) -> StorageError:
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND:
                return ObjectNotFound("object does not exist", key=key)
            if code in _PERMANENT:
                return StorageError("object store refused the request", key=key, code=code)
            return TransientStorageError("object store request failed", key=key, code=code)
        return TransientStorageError("object store unreachable", key=key, reason=type(exc).__name__)

    def _call(self, key: str, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(Bucket=self.bucket, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, key) from exc

    def put(self, key: str, data: bytes) -> None:
        self._call(key, "put_object", Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes:
        response = self._call(key, "get_object", Key=self._key(key))
        stream = response["Body"]
        try:
            body: bytes = stream.read()
        except BotoCoreError as exc:  # the connection broke while streaming the body
            raise self._translate(exc, key) from exc
        finally:
            stream.close()
        return body

    def head(self, key: str) -> ObjectInfo | None:
        try:
            response = self._call(key, "head_object", Key=self._key(key))
        except ObjectNotFound:
            return None
        return ObjectInfo(key, int(response["ContentLength"]), response["LastModified"])

    def delete(self, key: str) -> None:
        with contextlib.suppress(ObjectNotFound):
            self._call(key, "delete_object", Key=self._key(key))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        check_prefix(prefix)  # here, not in the generator, so a bad prefix fails at the call
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": full}
            if token:
                kwargs["ContinuationToken"] = token
            response = self._call(prefix, "list_objects_v2", **kwargs)
            for item in response.get("Contents", []):
                yield ObjectInfo(item["Key"][strip:], int(item["Size"]), item["LastModified"])
            if not response.get("IsTruncated"):
                return
            token = response.get("NextContinuationToken")

    def local_path(self, key: str) -> str | None:
        return None

    def check_writable(self) -> None:
        key = f"_health/{uuid.uuid4().hex}"
        self.put(key, b"ok")
        self.delete(key)

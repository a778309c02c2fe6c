"""Retries with exponential backoff and jitter around any ObjectStore.

Safe because every operation is idempotent: a PUT of an immutable, uniquely named object
may be repeated, a GET/HEAD/LIST has no effect, and DELETE of a missing object succeeds.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from duckmesh.errors import TransientStorageError
from duckmesh.storage.base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryingObjectStore:
    def __init__(
        self, inner: ObjectStore, *, attempts: int = 6, base_delay: float = 0.05, max_delay: float = 2.0
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.retries = 0

    def _run(self, operation: str, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except TransientStorageError as exc:
                if attempt == self.attempts:
                    raise
                self.retries += 1
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                log.warning("object_store_retry", extra={"operation": operation, "attempt": attempt,
                                                         "error_code": exc.error_code, **exc.context})
                time.sleep(delay)
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes) -> None:
        self._run("put", lambda: self.inner.put(key, data))

    def get(self, key: str) -> bytes:
        return self._run("get", lambda: self.inner.get(key))

    def head(self, key: str) -> ObjectInfo | None:
        return self._run("head", lambda: self.inner.head(key))

    def delete(self, key: str) -> None:
        self._run("delete", lambda: self.inner.delete(key))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return iter(self._run("list", lambda: list(self.inner.list(prefix))))

    def local_path(self, key: str) -> str | None:
        return self.inner.local_path(key)

    def check_writable(self) -> None:
        self._run("check_writable", self.inner.check_writable)

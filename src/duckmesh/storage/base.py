"""The ``ObjectStore`` port. Keys are relative, '/'-separated, and never contain '..'.

Every adapter passes ``tests/contract/test_object_store_contract.py`` unchanged.
Methods are synchronous (callers in async code use ``asyncio.to_thread``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from duckmesh.errors import StorageError


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified_at: datetime


class ObjectStore(Protocol):
    url: str

    def put(self, key: str, data: bytes) -> None:
        """Write the whole object atomically: readers see all of it or nothing.
        Raises TransientStorageError (retry may help) or StorageError."""
        ...

    def get(self, key: str) -> bytes:
        """Raises ObjectNotFound, TransientStorageError or StorageError."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """None when the object does not exist (a folder-like prefix is not an object)."""
        ...

    def delete(self, key: str) -> None:
        """Idempotent: deleting a missing object (or a folder-like prefix) is not an error."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a folder-like prefix ends with '/'), in key
        order. Raises StorageError for a prefix that is not a valid key (optionally ending with '/')."""
        ...

    def local_path(self, key: str) -> str | None:
        """A filesystem path DuckDB can read directly, when the store is local."""
        ...

    def check_writable(self) -> None:
        """Raise StorageError unless a small object can be written and removed."""
        ...


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise StorageError("invalid object key", key=key)
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: empty (everything) or a valid key, optionally ending with '/'.
    Checked so that a prefix can never walk out of the store (``../``) on a local disk."""
    if prefix:
        try:
            check_key(prefix.removesuffix("/"))
        except StorageError:
            raise StorageError("invalid object key prefix", prefix=prefix) from None
    return prefix


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and every missing parent owner-only (0700): data never sits in folders other
    local users can list."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)


def write_private(path: Path, data: bytes, *, sync: bool = False) -> None:
    """Write a new file readable by its owner only (0600)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())

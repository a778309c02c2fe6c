"""Immutable-file cache: object-store files fetched once per process into a local directory,
bounded by bytes (least recently used first), read by DuckDB at local speed.

Data files never change once written, so a cached copy never goes stale. Files in use by a
running query are pinned and never evicted. A local (file://) store is read in place.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from duckmesh.observability import metrics
from duckmesh.storage.base import ObjectStore, check_key, make_private_dirs, write_private


class FileCache:
    def __init__(self, store: ObjectStore, directory: Path, max_bytes: int) -> None:
        self.store = store
        self.directory = directory.resolve()
        self.max_bytes = max_bytes
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._pins: dict[str, int] = {}
        self._lock = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}
        self.hits = 0
        self.misses = 0
        make_private_dirs(self.directory)

    def root_for(self, prefix: str) -> str:
        """The directory under which the files of ``prefix`` (a tenant id) are read."""
        local = self.store.local_path(check_key(prefix))
        base = local if local is not None else str(self.directory / prefix)
        return base.rstrip("/") + "/"

    @contextmanager
    def files(self, keys: Sequence[str]) -> Iterator[list[str]]:
        """Local paths for ``keys``, pinned (never evicted) until the block ends."""
        with self._lock:
            for key in keys:
                self._pins[key] = self._pins.get(key, 0) + 1
        try:
            yield [self._path(key) for key in keys]
        finally:
            with self._lock:
                for key in keys:
                    self._pins[key] -= 1
                    if not self._pins[key]:
                        del self._pins[key]
                self._evict()

    def _path(self, key: str) -> str:
        local = self.store.local_path(key)
        if local is not None:
            self.hits += 1
            metrics.QUERY_CACHE_HITS.inc()
            return local
        target = self.directory / check_key(key)
        with self._lock:
            if key in self._sizes:
                self._sizes.move_to_end(key)
                self.hits += 1
                metrics.QUERY_CACHE_HITS.inc()
                return str(target)
            fetch_lock = self._fetching.setdefault(key, threading.Lock())
        with fetch_lock:  # one download per file even when many queries want it at once
            with self._lock:
                if key in self._sizes:
                    self.hits += 1
                    return str(target)
            data = self.store.get(key)
            make_private_dirs(target.parent)
            temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
            write_private(temp, data)
            os.replace(temp, target)
            with self._lock:
                self._sizes[key] = len(data)
                self._fetching.pop(key, None)
                self.misses += 1
            metrics.QUERY_CACHE_MISSES.inc()
        return str(target)

    def _evict(self) -> None:
        total = sum(self._sizes.values())
        for key in list(self._sizes):
            if total <= self.max_bytes:
                return
            if key in self._pins:
                continue
            total -= self._sizes.pop(key)
            (self.directory / key).unlink(missing_ok=True)

    @property
    def cached_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

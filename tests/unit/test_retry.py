"""RetryingObjectStore: transient failures are retried with exponential backoff, others are not."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from duckmesh.errors import ObjectNotFound, StorageError, TransientStorageError
from duckmesh.storage import retry
from duckmesh.storage.base import ObjectInfo
from duckmesh.storage.retry import RetryingObjectStore

INFO = ObjectInfo("a/b", 3, datetime(2024, 5, 1, tzinfo=UTC))


class FlakyStore:
    """An in-memory store whose every operation first raises ``error`` ``failures`` times."""

    url = "memory://flaky"

    def __init__(self, failures: int = 0, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or TransientStorageError("store unavailable")
        self.calls = 0
        self.objects: dict[str, bytes] = {}

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error

    def put(self, key: str, data: bytes) -> None:
        self._maybe_fail()
        self.objects[key] = data

    def get(self, key: str) -> bytes:
        self._maybe_fail()
        return self.objects[key]

    def head(self, key: str) -> ObjectInfo | None:
        self._maybe_fail()
        return INFO

    def delete(self, key: str) -> None:
        self._maybe_fail()
        self.objects.pop(key, None)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._maybe_fail()
        yield INFO

    def local_path(self, key: str) -> str | None:
        return None

    def check_writable(self) -> None:
        self._maybe_fail()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the wrapper asked for; nothing really sleeps."""
    asked: list[float] = []
    monkeypatch.setattr(retry.time, "sleep", asked.append)
    return asked


OPERATIONS: dict[str, tuple[Callable[[RetryingObjectStore], Any], Any]] = {
    "put": (lambda store: store.put("a/b", b"abc"), None),
    "get": (lambda store: store.get("a/b"), b"abc"),
    "head": (lambda store: store.head("a/b"), INFO),
    "delete": (lambda store: store.delete("x"), None),
    "list": (lambda store: list(store.list("a/")), [INFO]),
    "check_writable": (lambda store: store.check_writable(), None),
}


def test_a_transient_failure_is_retried_with_growing_delays_until_the_put_succeeds(sleeps: list[float]) -> None:
    inner = FlakyStore(failures=3)
    store = RetryingObjectStore(inner, attempts=5, base_delay=0.1, max_delay=10.0)

    store.put("a/b", b"abc")

    assert inner.objects == {"a/b": b"abc"}
    assert inner.calls == 4
    assert store.retries == 3
    # Delay n is base * 2**(n-1) scaled by a jitter factor in [0.5, 1].
    assert len(sleeps) == 3
    for n, delay in enumerate(sleeps, start=1):
        full = 0.1 * 2 ** (n - 1)
        assert full / 2 <= delay <= full


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_every_operation_is_retried_and_returns_the_inner_result(sleeps: list[float], operation: str) -> None:
    inner = FlakyStore(failures=2)
    inner.objects["a/b"] = b"abc"
    store = RetryingObjectStore(inner, attempts=3, base_delay=0.001)
    call, expected = OPERATIONS[operation]

    assert call(store) == expected
    assert inner.calls == 3
    assert len(sleeps) == 2


def test_it_gives_up_after_the_configured_attempts_and_raises_the_transient_error(sleeps: list[float]) -> None:
    failure = TransientStorageError("still down", key="a/b")
    inner = FlakyStore(failures=100, error=failure)
    store = RetryingObjectStore(inner, attempts=4, base_delay=0.001)

    with pytest.raises(TransientStorageError) as caught:
        store.put("a/b", b"abc")

    assert caught.value is failure
    assert inner.calls == 4
    assert len(sleeps) == 3
    assert inner.objects == {}


def test_a_single_attempt_means_no_retry(sleeps: list[float]) -> None:
    inner = FlakyStore(failures=1)
    store = RetryingObjectStore(inner, attempts=1)

    with pytest.raises(TransientStorageError):
        store.get("a/b")

    assert inner.calls == 1
    assert sleeps == []


def test_delays_never_exceed_the_maximum(sleeps: list[float]) -> None:
    inner = FlakyStore(failures=100)
    store = RetryingObjectStore(inner, attempts=10, base_delay=1.0, max_delay=2.0)

    with pytest.raises(TransientStorageError):
        store.head("a/b")

    assert len(sleeps) == 9
    assert all(0 < delay <= 2.0 for delay in sleeps)
    assert max(sleeps[3:]) >= 1.0  # capped at 2.0, jitter keeps at least half of it


@pytest.mark.parametrize(
    "error",
    [StorageError("access denied"), ObjectNotFound("no such object"), ValueError("a bug, not an outage")],
    ids=["permanent", "not-found", "other"],
)
def test_an_error_that_is_not_transient_is_raised_at_once_without_retry(
    sleeps: list[float], error: Exception
) -> None:
    inner = FlakyStore(failures=1, error=error)
    store = RetryingObjectStore(inner, attempts=5, base_delay=0.001)

    with pytest.raises(type(error)) as caught:
        store.get("a/b")

    assert caught.value is error
    assert inner.calls == 1
    assert store.retries == 0
    assert sleeps == []


def test_a_listing_that_breaks_midway_is_retried_from_the_start_without_duplicates(sleeps: list[float]) -> None:
    class BreaksMidway(FlakyStore):
        def list(self, prefix: str) -> Iterator[ObjectInfo]:
            self.calls += 1
            yield ObjectInfo("a/1", 1, INFO.modified_at)
            if self.calls == 1:
                raise TransientStorageError("connection reset while paging")
            yield ObjectInfo("a/2", 2, INFO.modified_at)

    store = RetryingObjectStore(BreaksMidway(), attempts=3, base_delay=0.001)

    assert [info.key for info in store.list("a/")] == ["a/1", "a/2"]
    assert len(sleeps) == 1

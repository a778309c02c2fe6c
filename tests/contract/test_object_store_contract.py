"""The ObjectStore contract: one behaviour suite, run unchanged against every backend (file, s3)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from duckmesh.errors import ObjectNotFound, StorageError, TransientStorageError
from duckmesh.storage.retry import RetryingObjectStore

INVALID_KEYS = ["../x", "a/../../x", "/abs", "a//b", "", "a/./b", "a/", "a\\b"]

OPERATIONS: dict[str, Callable[[RetryingObjectStore, str], Any]] = {
    "put": lambda store, key: store.put(key, b"data"),
    "get": lambda store, key: store.get(key),
    "head": lambda store, key: store.head(key),
    "delete": lambda store, key: store.delete(key),
}


def _listing(store: RetryingObjectStore, prefix: str) -> dict[str, int]:
    return {info.key: info.size for info in store.list(prefix)}


def test_an_object_reads_back_exactly_as_written(object_store: RetryingObjectStore) -> None:
    data = bytes(range(256)) * 100
    object_store.put("1/2/date=2024-05-01/part-7-0000.parquet", data)
    object_store.put("empty", b"")

    assert object_store.get("1/2/date=2024-05-01/part-7-0000.parquet") == data
    assert object_store.get("empty") == b""


def test_putting_a_key_again_replaces_the_whole_object(object_store: RetryingObjectStore) -> None:
    object_store.put("t/obj", b"x" * 10_000)
    object_store.put("t/obj", b"short")

    assert object_store.get("t/obj") == b"short"
    info = object_store.head("t/obj")
    assert info is not None and info.size == 5


def test_a_reader_never_sees_a_partly_written_object_or_a_temporary_key(object_store: RetryingObjectStore) -> None:
    old, new = b"o" * 300_000, b"n" * 300_000
    object_store.put("t/obj", old)
    stop = threading.Event()
    anomalies: list[object] = []
    reads = 0

    def read() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                data = object_store.get("t/obj")
                keys = sorted(_listing(object_store, "t/"))
            except Exception as exc:  # a failed read is an anomaly too; a thread must not die silently
                anomalies.append(exc)
                return
            reads += 1
            if data not in (old, new):
                anomalies.append(f"read {len(data)} bytes of mixed or partial content")
            if keys != ["t/obj"]:
                anomalies.append(keys)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(16):
            object_store.put("t/obj", new if i % 2 == 0 else old)
    finally:
        stop.set()
        reader.join()

    assert anomalies == []
    assert reads > 0
    assert object_store.get("t/obj") == old
    assert _listing(object_store, "") == {"t/obj": len(old)}


def test_head_reports_the_size_of_an_object(object_store: RetryingObjectStore) -> None:
    object_store.put("a/b.parquet", b"12345")

    info = object_store.head("a/b.parquet")

    assert info is not None
    assert (info.key, info.size) == ("a/b.parquet", 5)
    assert info.modified_at.tzinfo is not None


def test_head_of_a_missing_object_is_none(object_store: RetryingObjectStore) -> None:
    object_store.put("a/b/c.parquet", b"x")

    assert object_store.head("a/b/missing.parquet") is None
    assert object_store.head("nowhere/at/all") is None


def test_head_of_a_folder_like_prefix_is_none(object_store: RetryingObjectStore) -> None:
    object_store.put("a/b/c.parquet", b"x")

    assert object_store.head("a/b") is None
    assert object_store.head("a") is None


def test_head_of_a_key_running_through_an_object_is_none(object_store: RetryingObjectStore) -> None:
    object_store.put("a/b.parquet", b"x")

    assert object_store.head("a/b.parquet/c") is None


def test_deleting_removes_the_object_and_deleting_it_again_is_not_an_error(object_store: RetryingObjectStore) -> None:
    object_store.put("a/gone.parquet", b"x")
    object_store.put("a/kept.parquet", b"y")

    object_store.delete("a/gone.parquet")
    object_store.delete("a/gone.parquet")
    object_store.delete("never/existed.parquet")

    assert object_store.head("a/gone.parquet") is None
    assert _listing(object_store, "") == {"a/kept.parquet": 1}


def test_deleting_a_folder_like_prefix_deletes_nothing(object_store: RetryingObjectStore) -> None:
    object_store.put("a/b/c.parquet", b"x")

    object_store.delete("a/b")
    object_store.delete("a")
    object_store.delete("a/b/c.parquet/d")

    assert _listing(object_store, "") == {"a/b/c.parquet": 1}
    assert object_store.retries == 0


def test_listing_a_folder_prefix_returns_exactly_the_objects_under_it_with_sizes(
    object_store: RetryingObjectStore,
) -> None:
    objects = {
        "1/10/date=2024-05-01/part-1-0000.parquet": b"a",
        "1/10/date=2024-05-02/part-2-0000.parquet": b"bb",
        "1/11/date=2024-05-01/part-3-0000.parquet": b"ccc",
        "1/100/date=2024-05-01/part-4-0000.parquet": b"dddd",
        "12/10/date=2024-05-01/part-5-0000.parquet": b"eeeee",
    }
    for key, data in objects.items():
        object_store.put(key, data)

    assert _listing(object_store, "1/10/") == {
        "1/10/date=2024-05-01/part-1-0000.parquet": 1,
        "1/10/date=2024-05-02/part-2-0000.parquet": 2,
    }
    assert _listing(object_store, "1/") == {k: len(v) for k, v in objects.items() if k.startswith("1/")}
    assert _listing(object_store, "") == {k: len(v) for k, v in objects.items()}
    assert _listing(object_store, "2/") == {}
    assert _listing(object_store, "1/10/date=2024-05-03/") == {}


def test_listing_a_partial_name_matches_every_key_starting_with_it(object_store: RetryingObjectStore) -> None:
    for key in ("1/10/x", "1/100/y", "1/11/z", "1/2/w"):
        object_store.put(key, b"data")

    assert sorted(_listing(object_store, "1/10")) == ["1/10/x", "1/100/y"]
    assert sorted(_listing(object_store, "1/1")) == ["1/10/x", "1/100/y", "1/11/z"]
    assert sorted(_listing(object_store, "1/10/x")) == ["1/10/x"]


def test_listing_returns_objects_in_key_order(object_store: RetryingObjectStore) -> None:
    keys = ["b/z", "a/b/c", "a/a", "a/b-c", "a/ba", "a/c", "ab", "a-b/x"]
    for key in keys:
        object_store.put(key, b"x")

    assert [info.key for info in object_store.list("")] == sorted(keys)
    assert [info.key for info in object_store.list("a/")] == sorted(k for k in keys if k.startswith("a/"))


def test_listing_under_an_object_or_a_missing_folder_is_empty(object_store: RetryingObjectStore) -> None:
    object_store.put("a/b.parquet", b"x")

    assert _listing(object_store, "a/b.parquet/") == {}
    assert _listing(object_store, "missing/") == {}
    assert _listing(object_store, "missing/deeper/still") == {}


def test_listing_with_a_traversal_prefix_is_refused(object_store: RetryingObjectStore) -> None:
    object_store.put("a/b", b"x")

    for prefix in ("../", "..", "/", "a/../"):
        with pytest.raises(StorageError) as caught:
            list(object_store.list(prefix))
        assert not isinstance(caught.value, TransientStorageError | ObjectNotFound), prefix


def test_getting_a_missing_object_raises_object_not_found(object_store: RetryingObjectStore) -> None:
    object_store.put("a/deleted", b"x")
    object_store.delete("a/deleted")

    with pytest.raises(ObjectNotFound):
        object_store.get("a/never-written")
    with pytest.raises(ObjectNotFound):
        object_store.get("a/deleted")
    assert object_store.retries == 0


def test_getting_a_folder_like_prefix_or_a_key_through_an_object_raises_object_not_found(
    object_store: RetryingObjectStore,
) -> None:
    object_store.put("a/b/c.parquet", b"x")

    for key in ("a", "a/b", "a/b/c.parquet/d"):
        with pytest.raises(ObjectNotFound):
            object_store.get(key)
    assert object_store.retries == 0


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("key", INVALID_KEYS)
def test_an_invalid_key_is_refused_with_a_permanent_storage_error(
    object_store: RetryingObjectStore, operation: str, key: str
) -> None:
    with pytest.raises(StorageError) as caught:
        OPERATIONS[operation](object_store, key)

    assert not isinstance(caught.value, TransientStorageError | ObjectNotFound)
    assert object_store.retries == 0
    assert _listing(object_store, "") == {}


def test_check_writable_succeeds_and_leaves_no_object_behind(object_store: RetryingObjectStore) -> None:
    object_store.check_writable()

    assert _listing(object_store, "") == {}


def test_local_path_is_a_readable_file_for_a_local_store_and_none_otherwise(
    object_store: RetryingObjectStore,
) -> None:
    object_store.put("a/b.parquet", b"parquet bytes")

    path = object_store.local_path("a/b.parquet")

    if object_store.url.startswith("file://"):
        assert path is not None
        assert Path(path).read_bytes() == b"parquet bytes"
    else:
        assert path is None

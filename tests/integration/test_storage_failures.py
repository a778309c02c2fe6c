"""Recovery scenario 3 (OPERATIONS_SECURITY.md): object store transient failure.

Retries with backoff; no event lost; no partial snapshot. The store is a real local store behind a
fault-injecting wrapper, retried by RetryingObjectStore as the application wires it; the catalog
and bus are real PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.errors import TransientStorageError
from duckmesh.storage.base import ObjectInfo, ObjectStore
from duckmesh.storage.local import LocalObjectStore
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table, head_watermark, records, snapshot_rows

RETRY_ATTEMPTS = 3


class FaultyStore:
    """A real store whose puts fail on demand: first as ``script`` says (True = fail), then
    whenever ``down`` is set. Every other operation goes straight to the real store."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.script: list[bool] = []
        self.down = False
        self.failed_puts = 0
        self.written: list[str] = []

    def put(self, key: str, data: bytes) -> None:
        fail = self.script.pop(0) if self.script else self.down
        if fail:
            self.failed_puts += 1
            raise TransientStorageError("injected object store outage", key=key)
        self.inner.put(key, data)
        self.written.append(key)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def head(self, key: str) -> ObjectInfo | None:
        return self.inner.head(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def local_path(self, key: str) -> str | None:
        return self.inner.local_path(key)

    def check_writable(self) -> None:
        self.put("_health/probe", b"ok")
        self.delete("_health/probe")


@pytest.fixture
def faulty(object_dir: Path) -> FaultyStore:
    return FaultyStore(LocalObjectStore(object_dir.as_uri()))


@pytest.fixture
def flaky_store(faulty: FaultyStore) -> RetryingObjectStore:
    return RetryingObjectStore(faulty, attempts=RETRY_ATTEMPTS, base_delay=0.001)


async def _ingest(client: httpx.AsyncClient, headers: dict[str, str], table: str, batch: list[dict[str, Any]]) -> None:
    response = await client.post(f"/v1/ingest/{table}", headers=headers, json={"records": batch})
    assert response.status_code == 200, response.text


async def _events(pool: CatalogPool, tenant_id: int) -> list[tuple[str, int]]:
    """(state, attempts) of every record of the tenant (those of its segment), in token order."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT state, attempts, record_count FROM ingest_segment WHERE tenant_id = %s ORDER BY min_token",
            (tenant_id,),
        )
        return [(r["state"], r["attempts"]) for r in await cur.fetchall() for _ in range(r["record_count"])]


async def _catalog_counts(pool: CatalogPool, tenant_id: int) -> dict[str, int]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM snapshot WHERE tenant_id = %(t)s) AS snapshots,"
            " (SELECT count(*) FROM data_file WHERE tenant_id = %(t)s) AS data_files,"
            " (SELECT count(*) FROM snapshot_file f JOIN snapshot s USING (snapshot_id)"
            "   WHERE s.tenant_id = %(t)s) AS snapshot_files",
            {"t": tenant_id},
        )
        row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def _referenced_paths(pool: CatalogPool) -> set[str]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT f.path FROM data_file f"
            " UNION SELECT f.path FROM snapshot_file s JOIN data_file f USING (file_id)"
        )
        return {r["path"] for r in await cur.fetchall()}


async def test_a_store_failing_for_fewer_tries_than_the_retries_still_publishes_the_exact_rows(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus,
    faulty: FaultyStore, flaky_store: RetryingObjectStore,
) -> None:
    headers = await make_key("acme")
    table = await create_table(client, headers)
    await _ingest(client, headers, "events", records(0, 10))
    faulty.script = [True] * (RETRY_ATTEMPTS - 1)

    coordinator = Coordinator(pool, bus, flaky_store, CoordinatorConfig(owner="c1"))
    assert await coordinator.run_once() == (True, False)

    assert faulty.failed_puts == RETRY_ATTEMPTS - 1
    assert flaky_store.retries == RETRY_ATTEMPTS - 1
    snapshot_id, watermark = await head_watermark(pool, table["tenant_id"])
    assert snapshot_id is not None and watermark == 10
    rows = await snapshot_rows(pool, flaky_store, table["tenant_id"], table["table_id"])
    assert [r["id"] for r in rows] == list(range(10))
    assert [r["_dm_token"] for r in rows] == list(range(1, 11))
    assert [str(r["amount"]) for r in rows] == [f"{i}.25" for i in range(10)]
    assert await _events(pool, table["tenant_id"]) == [("committed", 1)] * 10
    # Two snapshots: the table's creation and the ingest.
    assert await _catalog_counts(pool, table["tenant_id"]) == {"snapshots": 2, "data_files": 1, "snapshot_files": 1}


async def test_an_outage_longer_than_the_retries_publishes_nothing_and_loses_nothing(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus,
    faulty: FaultyStore, flaky_store: RetryingObjectStore,
) -> None:
    headers = await make_key("acme")
    events = await create_table(client, headers, "events")
    clicks = await create_table(client, headers, "clicks")
    tenant_id = events["tenant_id"]
    await _ingest(client, headers, "events", records(0, 10))
    await _ingest(client, headers, "clicks", records(100, 5, prefix="c"))
    # One claim covers both tables, so two files are written: the first lands, then the store goes down.
    faulty.script = [False]
    faulty.down = True

    coordinator = Coordinator(pool, bus, flaky_store, CoordinatorConfig(owner="c1"))
    assert await coordinator.run_once() == (True, False)

    assert faulty.failed_puts == RETRY_ATTEMPTS
    created_head = await head_watermark(pool, tenant_id)
    assert created_head[1] == 0
    # Only the two tables' creation snapshots: nothing of the batch was published.
    assert await _catalog_counts(pool, tenant_id) == {"snapshots": 2, "data_files": 0, "snapshot_files": 0}
    assert await _events(pool, tenant_id) == [("accepted", 0)] * 15
    [orphan] = faulty.written
    assert orphan.startswith(f"{tenant_id}/{events['table_id']}/")
    assert flaky_store.head(orphan) is None, "the file written before the outage was never referenced: deleted"
    assert orphan not in await _referenced_paths(pool)

    faulty.down = False
    assert await coordinator.run_once() == (True, False)

    snapshot_id, watermark = await head_watermark(pool, tenant_id)
    assert snapshot_id is not None and watermark == 15
    event_rows = await snapshot_rows(pool, flaky_store, tenant_id, events["table_id"])
    click_rows = await snapshot_rows(pool, flaky_store, tenant_id, clicks["table_id"])
    assert [r["_dm_token"] for r in event_rows] == list(range(1, 11))
    assert [r["id"] for r in event_rows] == list(range(10))
    assert [r["_dm_token"] for r in click_rows] == list(range(11, 16))
    assert [r["id"] for r in click_rows] == list(range(100, 105))
    assert await _events(pool, tenant_id) == [("committed", 1)] * 15
    assert await _catalog_counts(pool, tenant_id) == {"snapshots": 3, "data_files": 2, "snapshot_files": 2}
    assert orphan not in await _referenced_paths(pool)
    assert await coordinator.run_once() == (False, False)


async def test_repeated_storage_outages_never_dead_letter_events(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus,
    faulty: FaultyStore, flaky_store: RetryingObjectStore,
) -> None:
    headers = await make_key("acme")
    table = await create_table(client, headers)
    tenant_id = table["tenant_id"]
    await _ingest(client, headers, "events", records(0, 6))
    faulty.down = True
    max_attempts = 2
    coordinator = Coordinator(pool, bus, flaky_store, CoordinatorConfig(owner="c1", max_attempts=max_attempts))

    for _ in range(max_attempts + 3):
        assert await coordinator.run_once() == (True, False)
        assert await _events(pool, tenant_id) == [("accepted", 0)] * 6

    assert faulty.failed_puts == (max_attempts + 3) * RETRY_ATTEMPTS
    assert (await head_watermark(pool, tenant_id))[1] == 0

    faulty.down = False
    assert await coordinator.run_once() == (True, False)

    assert await _events(pool, tenant_id) == [("committed", 1)] * 6
    snapshot_id, watermark = await head_watermark(pool, tenant_id)
    assert snapshot_id is not None and watermark == 6
    rows = await snapshot_rows(pool, flaky_store, tenant_id, table["table_id"])
    assert [r["_dm_token"] for r in rows] == list(range(1, 7))

"""CONSISTENCY.md: the watermark never covers an unpublished token, never decreases."""

from __future__ import annotations

import httpx
import pytest

from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table, head_watermark, poison, records, snapshot_rows


async def test_two_coordinators_publishing_out_of_order_never_cover_an_unpublished_token(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    headers = await make_key()
    table = await create_table(client, headers)
    tenant_id, table_id = table["tenant_id"], table["table_id"]
    for batch in range(2):
        response = await client.post("/v1/ingest/events", headers=headers, json={"records": records(batch * 100, 100)})
        assert response.status_code == 200
    slow = Coordinator(pool, bus, store, CoordinatorConfig(owner="slow", max_batch_events=100))
    fast = Coordinator(pool, bus, store, CoordinatorConfig(owner="fast", max_batch_events=100))

    # "slow" claims tokens 1-100 and stalls; "fast" claims and publishes 101-200 first.
    held = await bus.claim("slow", 100, 1 << 30, 30)
    assert held is not None and [(s.min_token, s.record_count) for s in held.segments] == [(1, 100)]
    assert await fast.run_once() == (True, True)

    snapshot_id, watermark = await head_watermark(pool, tenant_id)
    assert snapshot_id is not None
    assert watermark == 0, "tokens 1-100 are not published, so the watermark must stay at 0"
    visible = await snapshot_rows(pool, store, tenant_id, table_id)
    assert [r["_dm_token"] for r in visible] == list(range(101, 201)), "fresher than promised is fine"

    await slow.process(held)
    _, watermark = await head_watermark(pool, tenant_id)
    assert watermark == 200
    rows = await snapshot_rows(pool, store, tenant_id, table_id)
    assert [r["_dm_token"] for r in rows] == list(range(1, 201))


async def test_watermarks_never_decrease_across_snapshots(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    headers = await make_key()
    table = await create_table(client, headers)
    coordinators = [Coordinator(pool, bus, store, CoordinatorConfig(owner=f"c{i}", max_batch_events=7)) for i in range(3)]
    for round_ in range(6):
        await client.post("/v1/ingest/events", headers=headers, json={"records": records(round_ * 10, 10)})
        for coordinator in coordinators:
            await coordinator.run_once()
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT snapshot_id, max_visibility_token FROM snapshot WHERE tenant_id = %s ORDER BY snapshot_id",
            (table["tenant_id"],),
        )
        marks = [r["max_visibility_token"] for r in await cur.fetchall()]
        cur = await conn.execute(
            "SELECT w.max_visibility_token FROM snapshot_table_watermark w JOIN snapshot s USING (snapshot_id)"
            " WHERE w.table_id = %s ORDER BY s.snapshot_id",
            (table["table_id"],),
        )
        table_marks = [r["max_visibility_token"] for r in await cur.fetchall()]
    assert marks == sorted(marks) and marks[-1] == 60
    assert table_marks == sorted(table_marks) and table_marks[-1] == 60


async def test_a_poison_record_inside_a_segment_is_dead_lettered_alone_without_blocking_the_watermark(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = await make_key()
    table = await create_table(client, headers)
    poison(monkeypatch, "id", 2)  # a bug that cannot materialize the record with id 2 (token 3)
    await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 5)})
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    await coordinator.run_once()
    _, watermark = await head_watermark(pool, table["tenant_id"])
    assert watermark == 5, "the poison record is dead-lettered in the same commit: resolved"
    rows = await snapshot_rows(pool, store, table["tenant_id"], table["table_id"])
    assert [r["_dm_token"] for r in rows] == [1, 2, 4, 5], "the rest of its segment is published"
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT visibility_token, failure_reason FROM ingest_dead_letter")
        dead = await cur.fetchall()
    assert [d["visibility_token"] for d in dead] == [3] and "materialize" in dead[0]["failure_reason"]
    lag = (await client.get("/v1/lag", headers=headers)).json()
    assert lag["failed_events"] == 1 and lag["latest_visibility_token"] == 5

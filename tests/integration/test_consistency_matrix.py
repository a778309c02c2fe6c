"""CONSISTENCY.md test matrix, in-process coordinators (item 2, a killed coordinator process,
is in tests/acceptance)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.notify import Listener
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table, records, running_coordinators
from tests.helpers import query_ok as query


async def test_1_strict_write_then_read_under_load_always_sees_the_write(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, store: RetryingObjectStore, listener: Listener
) -> None:
    headers = await make_key()
    await create_table(client, headers)

    async def writer(w: int) -> None:
        for i in range(8):
            start = w * 1000 + i * 10
            receipt = (await client.post("/v1/ingest/events", headers=headers,
                                         json={"records": records(start, 10, prefix=f"w{w}")})).json()
            seen = await query(client, headers, "SELECT count(*) FROM events WHERE id BETWEEN ? AND ?",
                               params=[start, start + 9], min_visibility_token=receipt["max_visibility_token"],
                               consistency_timeout_ms=10_000)
            assert seen["rows"] == [[10]], f"writer {w} batch {i} not visible at its token"
            assert seen["max_visibility_token"] >= receipt["max_visibility_token"]

    async def reader() -> None:
        last = 0
        for _ in range(30):
            body = await query(client, headers, "SELECT count(*) FROM events")
            assert body["max_visibility_token"] >= last, "a later read never goes back in time"
            last = body["max_visibility_token"]
            await asyncio.sleep(0.01)

    async with running_coordinators(pool, store, listener):
        await asyncio.gather(*(writer(w) for w in range(6)), *(reader() for _ in range(3)))


async def test_3_concurrent_writes_across_tenants_stay_apart_with_independent_watermarks(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, store: RetryingObjectStore, listener: Listener
) -> None:
    tenants = {name: await make_key(name) for name in ("t1", "t2", "t3")}
    for headers in tenants.values():
        await create_table(client, headers)

    async def write(name: str, headers: dict[str, str], count: int) -> int:
        token = 0
        for i in range(count):
            body = {"records": records(i * 5, 5, prefix=name)}
            token = (await client.post("/v1/ingest/events", headers=headers, json=body)).json()["max_visibility_token"]
        return token

    async with running_coordinators(pool, store, listener):
        tokens = await asyncio.gather(*(write(n, h, c) for (n, h), c in zip(tenants.items(), (2, 4, 6), strict=True)))
        assert tokens == [10, 20, 30], "each tenant has its own token sequence"
        for (name, headers), token in zip(tenants.items(), tokens, strict=True):
            body = await query(client, headers, "SELECT count(*), count(DISTINCT name) FROM events",
                               min_visibility_token=token, consistency_timeout_ms=10_000)
            assert body["rows"] == [[token, token]], name
            assert body["max_visibility_token"] == token


async def test_4_retried_and_concurrent_same_key_ingest_gives_one_visible_row_per_key(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, store: RetryingObjectStore, listener: Listener
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    async with running_coordinators(pool, store, listener):
        batches = [records(0, 30)] * 20 + [records(10, 30)] * 20
        responses = await asyncio.gather(
            *(client.post("/v1/ingest/events", headers=headers, json={"records": b}) for b in batches)
        )
        token = max(r.json()["max_visibility_token"] for r in responses)
        body = await query(client, headers, "SELECT count(*), count(DISTINCT id) FROM events",
                           min_visibility_token=token, consistency_timeout_ms=10_000)
    assert body["rows"] == [[40, 40]]


async def test_5_timeout_before_publication_then_success_after(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    token = (await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 3)})).json()[
        "max_visibility_token"]
    early = await client.post("/v1/query", headers=headers, json={
        "sql": "SELECT count(*) FROM events", "min_visibility_token": token, "consistency_timeout_ms": 150})
    assert early.status_code == 504 and early.json()["error_code"] == "CONSISTENCY_TIMEOUT"
    await Coordinator(pool, bus, store, CoordinatorConfig(owner="c")).run_once()
    late = await query(client, headers, "SELECT count(*) FROM events", min_visibility_token=token,
                       consistency_timeout_ms=150)
    assert late["rows"] == [[3]]


async def test_6_the_same_snapshot_id_returns_the_same_result_after_later_ingest(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    headers = await make_key()
    await create_table(client, headers, "kv", columns=[
        {"name": "id", "type": "int64", "nullable": False}, {"name": "v", "type": "string"}], primary_key=["id"])
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    history: list[tuple[int, list[list[Any]]]] = []
    for round_ in range(5):
        batch = [{"idempotency_key": f"{round_}-{i}", "op": "upsert" if i % 3 else "delete",
                  "payload": {"id": i, "v": f"r{round_}"} if i % 3 else {"id": i}} for i in range(6)]
        await client.post("/v1/ingest/kv", headers=headers, json={"records": batch})
        await coordinator.run_once()
        body = await query(client, headers, "SELECT id, v FROM kv ORDER BY id")
        history.append((body["snapshot_id"], body["rows"]))
    for snapshot_id, rows in history:
        again = await query(client, headers, "SELECT id, v FROM kv ORDER BY id", snapshot_id=snapshot_id)
        assert again["rows"] == rows and again["snapshot_id"] == snapshot_id


async def test_7_out_of_order_publication_keeps_strict_reads_waiting(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    for batch in range(2):
        await client.post("/v1/ingest/events", headers=headers, json={"records": records(batch * 100, 100)})
    held = await bus.claim("slow", 100, 1 << 30, 30)
    assert held is not None
    await Coordinator(pool, bus, store, CoordinatorConfig(owner="fast", max_batch_events=100)).run_once()
    # Rows 101-200 are already in the latest snapshot, but token 150 is not covered: wait, then time out.
    best_effort = await query(client, headers, "SELECT count(*) FROM events")
    assert best_effort["rows"] == [[100]] and best_effort["max_visibility_token"] == 0
    strict = await client.post("/v1/query", headers=headers, json={
        "sql": "SELECT count(*) FROM events", "min_visibility_token": 150, "consistency_timeout_ms": 200})
    assert strict.status_code == 504
    waiting = asyncio.create_task(query(client, headers, "SELECT count(*) FROM events", min_visibility_token=150,
                                        consistency_timeout_ms=10_000))
    await asyncio.sleep(0.1)
    await Coordinator(pool, bus, store, CoordinatorConfig(owner="slow")).process(held)
    body = await waiting
    assert body["rows"] == [[200]] and body["max_visibility_token"] == 200


async def test_an_idle_coordinator_is_woken_by_notify_not_the_flush_interval(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, store: RetryingObjectStore, listener: Listener
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    stop = asyncio.Event()
    # A flush interval far longer than the barrier's timeout: only NOTIFY can make the write visible in time.
    worker = Coordinator(pool, PostgresBus(pool, listener), store, CoordinatorConfig(owner="idle", flush_interval=60))
    task = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.sleep(0.2)  # the coordinator found nothing and is waiting
        token = (await client.post("/v1/ingest/events", headers=headers,
                                   json={"records": records(0, 1)})).json()["max_visibility_token"]
        body = await query(client, headers, "SELECT count(*) FROM events", min_visibility_token=token,
                           consistency_timeout_ms=10_000)
        assert body["rows"] == [[1]]
    finally:
        stop.set()
        await task

"""Test helpers: create tables over HTTP, read a snapshot's rows straight from its Parquet files."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import duckdb
import httpx

from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog import snapshots
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.notify import Listener
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.domain import TenantId
from duckmesh.storage.base import ObjectStore

EVENTS_COLUMNS = [
    {"name": "id", "type": "int64", "nullable": False},
    {"name": "name", "type": "string"},
    {"name": "amount", "type": "decimal(12,2)"},
    {"name": "at", "type": "timestamp"},
]


async def create_table(
    client: httpx.AsyncClient, headers: dict[str, str], name: str = "events",
    columns: list[dict[str, Any]] | None = None, primary_key: list[str] | None = None,
) -> dict[str, Any]:
    response = await client.post("/v1/tables", headers=headers, json={
        "table_name": name, "columns": columns or EVENTS_COLUMNS, "primary_key": primary_key or [],
    })
    assert response.status_code == 201, response.text
    return dict(response.json())


def records(start: int, count: int, prefix: str = "k", op: str = "insert") -> list[dict[str, Any]]:
    return [
        {"idempotency_key": f"{prefix}-{i}", "op": op,
         "payload": {"id": i, "name": f"n{i}", "amount": f"{i}.25", "at": "2024-05-01T12:00:00Z"}}
        for i in range(start, start + count)
    ]


async def snapshot_rows(
    pool: CatalogPool, store: ObjectStore, tenant_id: int, table_id: int, snapshot_id: int | None = None
) -> list[dict[str, Any]]:
    """All physical rows (hidden columns included) of one table in a snapshot, read with DuckDB."""
    async with pool.connection() as conn:
        if snapshot_id is None:
            head = await snapshots.head(conn, TenantId(tenant_id))
            if head.snapshot_id is None:
                return []
            snapshot_id = head.snapshot_id
        files = [f for f in await snapshots.live_files(conn, TenantId(tenant_id), snapshot_id) if f.table_id == table_id]
    if not files:
        return []
    paths = [store.local_path(f.path) for f in files]
    relation = duckdb.sql(f"SELECT * FROM read_parquet({paths!r}, hive_partitioning = false) ORDER BY _dm_token")
    names = relation.columns
    return [dict(zip(names, row, strict=True)) for row in relation.fetchall()]


async def head_watermark(pool: CatalogPool, tenant_id: int) -> tuple[int | None, int]:
    async with pool.connection() as conn:
        head = await snapshots.head(conn, TenantId(tenant_id))
    return head.snapshot_id, head.max_visibility_token


@contextlib.asynccontextmanager
async def running_coordinators(
    pool: CatalogPool, store: ObjectStore, listener: Listener, count: int = 2
) -> AsyncIterator[list[Coordinator]]:
    """``count`` coordinators running their real loop (NOTIFY wake-ups, 50 ms flush) until the block ends."""
    stop = asyncio.Event()
    workers = [
        Coordinator(pool, PostgresBus(pool, listener), store, CoordinatorConfig(owner=f"c{i}", flush_interval=0.05))
        for i in range(count)
    ]
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    try:
        yield workers
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def query_ok(client: httpx.AsyncClient, headers: dict[str, str], sql: str, **extra: Any) -> dict[str, Any]:
    """POST /v1/query, which must answer 200; the parsed body."""
    response = await client.post("/v1/query", headers=headers, json={"sql": sql, **extra})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def post_query(client: httpx.AsyncClient, headers: dict[str, str], sql: str, **extra: Any) -> httpx.Response:
    return await client.post("/v1/query", headers=headers, json={"sql": sql, **extra})


async def wait_until_blocked(pool: CatalogPool, count: int = 1, timeout: float = 10.0) -> None:
    """Wait until ``count`` sessions of this database wait on a lock (a forced interleaving: the
    test holds a lock in its own transaction and checks that the operation under test waits)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            )
            row = await cur.fetchone()
        if row is not None and row["n"] >= count:
            return
        assert loop.time() < deadline, "the operation never waited on the lock"
        await asyncio.sleep(0.02)

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


# --- the segment bus, as tests look at it ------------------------------------------------------

async def accepted_records(pool: CatalogPool, tenant_id: int | None = None, table_id: int | None = None) -> int:
    """Records ever accepted onto the bus (every segment, whatever its state)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT coalesce(sum(record_count), 0)::bigint AS n FROM ingest_segment"
            " WHERE (%(t)s::bigint IS NULL OR tenant_id = %(t)s) AND (%(tb)s::bigint IS NULL OR table_id = %(tb)s)",
            {"t": tenant_id, "tb": table_id},
        )
        row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def bus_records(pool: CatalogPool, tenant_id: int | None = None) -> list[dict[str, Any]]:
    """Records still on the bus (segments not yet resolved), in token order: key, token, op."""
    import pyarrow as pa

    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT min_token, data FROM ingest_segment WHERE data IS NOT NULL"
            " AND (%(t)s::bigint IS NULL OR tenant_id = %(t)s) ORDER BY min_token",
            {"t": tenant_id},
        )
        rows = await cur.fetchall()
    found = []
    for row in rows:
        table = pa.ipc.open_stream(pa.py_buffer(row["data"])).read_all()
        for offset, (key, op) in enumerate(zip(table.column("_dm_key").to_pylist(), table.column("_dm_op").to_pylist(),
                                               strict=True)):
            found.append({"idempotency_key": key, "visibility_token": row["min_token"] + offset, "op": op})
    return found


async def segment_states(pool: CatalogPool, tenant_id: int) -> dict[str, int]:
    """Records per segment state of a tenant, e.g. {"committed": 10}."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT state, sum(record_count)::bigint AS n FROM ingest_segment WHERE tenant_id = %s GROUP BY state",
            (tenant_id,),
        )
        return {r["state"]: int(r["n"]) for r in await cur.fetchall()}


def poison(monkeypatch: Any, column: str, value: Any) -> list[bool]:
    """Make the coordinator unable to materialize every record whose ``column`` equals ``value``
    (as a bug in the materialization would); returns a switch: set ``[0] = False`` to fix it."""
    from duckmesh.coordinator import materialize

    build = materialize.build_table
    active = [True]

    def refusing(records: Any, schema: Any) -> Any:
        if active[0] and column in records.column_names and value in records.column(column).to_pylist():
            raise ValueError(f"cannot materialize {column}={value!r}")
        return build(records, schema)

    monkeypatch.setattr(materialize, "build_table", refusing)
    return active

"""Issue 4 check: 200 micro-batch files -> one compaction run -> GROUP BY vs raw DuckDB.

Runs in-process against a scratch database on the local PostgreSQL (127.0.0.1 only): ingests
200 micro-batches through the bus and the coordinator (one Parquet file each), measures a
GROUP BY through the query service (server-side time, warm), compacts, measures again, and
compares with raw DuckDB over the single merged file. Prints a Markdown table.

    .venv/bin/python bench/compaction_vs_raw.py [--batches 200] [--rows 5000] [--runs 15]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson
import psycopg

from duckmesh.bus.base import NewEvent
from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog import migrate, snapshots, tables, tenants
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.domain import ALL_ROLES, Op
from duckmesh.maintenance.compaction import CompactionPolicy, Compactor
from duckmesh.query.barrier import VisibilityBarrier
from duckmesh.query.engine import QueryEngine
from duckmesh.query.models import QueryRequest
from duckmesh.query.service import QueryLimits, QueryService
from duckmesh.schema import TableSchema
from duckmesh.storage.cache import FileCache
from duckmesh.storage.local import LocalObjectStore

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
SQL = "SELECT kind, count(*) AS n, sum(amount) AS total, avg(amount) AS mean FROM events GROUP BY kind ORDER BY kind"
RAW_SQL = SQL.replace("FROM events", "FROM read_parquet({files}, hive_partitioning = false)")
COLUMNS = [{"name": "id", "type": "int64", "nullable": False}, {"name": "user_id", "type": "int64"},
           {"name": "kind", "type": "string"}, {"name": "amount", "type": "float64"}]


def _events(batch: int, rows: int) -> list[NewEvent]:
    now = datetime.now(UTC)
    out = []
    for i in range(batch * rows, (batch + 1) * rows):
        payload = orjson.dumps({"id": i, "user_id": i % 9973, "kind": f"k{i % 17}", "amount": (i % 1000) / 10},
                               option=orjson.OPT_SORT_KEYS).decode()
        out.append(NewEvent(f"e{i}", Op.INSERT, payload, hashlib.sha256(payload.encode()).digest(), now))
    return out


def _stats(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"{statistics.median(ordered):.1f} ms (p95 {p95:.1f}, min {ordered[0]:.1f}, max {ordered[-1]:.1f})"


async def _time_service(service: QueryService, principal: tenants.Principal, runs: int) -> list[float]:
    await service.execute(principal, QueryRequest(sql=SQL), None)  # warm: bind views, page cache
    samples = []
    for _ in range(runs):
        outcome = await service.execute(principal, QueryRequest(sql=SQL), None)
        samples.append(outcome.duration_ms)
    return samples


def _time_raw(files: list[str], runs: int) -> list[float]:
    con = duckdb.connect(config={"threads": 2})
    sql = RAW_SQL.format(files=repr(files))
    con.sql(sql).fetchall()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        con.sql(sql).fetchall()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def main(batches: int, rows: int, runs: int) -> None:
    name = f"dm_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    workdir = Path(tempfile.mkdtemp(prefix="dm-compaction-bench-"))
    try:
        migrate.upgrade(dsn)
        store = LocalObjectStore((workdir / "objects").as_uri())
        async with CatalogPool(dsn, max_size=6) as pool, VisibilityBarrier(pool, dsn) as barrier:
            async with pool.connection() as conn:
                tenant = await tenants.create_tenant(conn, "bench")
                table = await tables.create_table(conn, tenant.tenant_id, "events", TableSchema.build(COLUMNS), "backward")
            principal = tenants.Principal(tenant.tenant_id, None, ALL_ROLES)
            bus = PostgresBus(pool)
            coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="bench"))
            started = time.perf_counter()
            for batch in range(batches):
                await bus.publish(tenant.tenant_id, table.table_id, 1, _events(batch, rows))
                await coordinator.run_once()
            load_s = time.perf_counter() - started
            engine = QueryEngine(FileCache(store, workdir / "cache", 10**10), threads=2)
            service = QueryService(pool, engine, barrier, QueryLimits())
            before = await _time_service(service, principal, runs)
            async with pool.connection() as conn:
                head = await snapshots.head(conn, tenant.tenant_id)
                micro = [store.local_path(f.path) for f in await snapshots.live_files(conn, tenant.tenant_id, head.snapshot_id)]
            raw_micro = _time_raw(micro, runs)
            compactor = Compactor(pool, store, CompactionPolicy(), "bench")
            started = time.perf_counter()
            result = await compactor.compact_table(tenant.tenant_id, table)
            compact_s = time.perf_counter() - started
            after = await _time_service(service, principal, runs)
            async with pool.connection() as conn:
                head = await snapshots.head(conn, tenant.tenant_id)
                merged = [store.local_path(f.path) for f in await snapshots.live_files(conn, tenant.tenant_id, head.snapshot_id)]
            raw_merged = _time_raw(merged, runs)
        ratio = statistics.median(after) / statistics.median(raw_merged)
        print(f"## Compaction vs raw DuckDB ({batches} micro-batches x {rows} rows = {batches * rows:,} rows)\n")
        print("| measurement | value |\n| --- | --- |")
        print(f"| load through bus + coordinator | {load_s:.1f} s ({batches} files) |")
        print(f"| compaction run | {compact_s:.2f} s, {result.get('input_files')} files / "
              f"{result.get('input_bytes', 0) / 1e6:.1f} MB -> {result.get('output_files')} file(s) |")
        print(f"| GROUP BY via DuckMesh, {len(micro)} micro-batch files (server side, warm) | {_stats(before)} |")
        print(f"| GROUP BY raw DuckDB over the same {len(micro)} files | {_stats(raw_micro)} |")
        print(f"| GROUP BY via DuckMesh after compaction ({len(merged)} file) | {_stats(after)} |")
        print(f"| GROUP BY raw DuckDB over the single merged file | {_stats(raw_merged)} |")
        print(f"| **DuckMesh after compaction / raw single file** | **{ratio:.2f}x** (target <= 1.5x) |")
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    asyncio.run(main(args.batches, args.rows, args.runs))

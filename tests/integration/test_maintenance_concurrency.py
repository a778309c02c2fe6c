"""Compaction running beside ingest, queries, other compactors, crashes and lost races
(MAINTENANCE.md: restart-safe, safe from several processes at once, aborts leave nothing visible)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import httpx

from duckmesh.api.context import AppContext
from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog import maintenance, snapshots, tables
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.notify import Listener
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.domain import TableId, TenantId
from duckmesh.maintenance.compaction import CompactionPlan, CompactionPolicy, Compactor, plan
from duckmesh.maintenance.retention import RetentionPolicy
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table, records, running_coordinators
from tests.helpers import query_ok as query

KV_COLUMNS: list[dict[str, Any]] = [{"name": "id", "type": "int64", "nullable": False}, {"name": "v", "type": "int64"}]
EAGER = CompactionPolicy(min_input_files=2)






async def ingest(client: httpx.AsyncClient, headers: dict[str, str], table: str, body: list[dict[str, Any]]) -> int:
    response = await client.post(f"/v1/ingest/{table}", headers=headers, json={"records": body})
    assert response.status_code in (200, 202), response.text
    return int(response.json()["max_visibility_token"])


async def live_paths(pool: CatalogPool, tenant_id: TenantId, table_id: TableId) -> list[str]:
    async with pool.connection() as conn:
        return [f.path for f in await snapshots.current_files(conn, tenant_id, table_id)]


async def head_id(pool: CatalogPool, tenant_id: TenantId) -> int | None:
    async with pool.connection() as conn:
        return (await snapshots.head(conn, tenant_id)).snapshot_id


async def test_compaction_loop_beside_ingest_and_queries_loses_nothing_and_never_goes_back(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, store: RetryingObjectStore,
    listener: Listener, app_context: AppContext,
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    kv = await create_table(client, headers, "kv", columns=KV_COLUMNS, primary_key=["id"])
    tenant_id = TenantId(kv["tenant_id"])
    compactor = app_context.maintenance.compactor
    compactor.policy = EAGER
    writers, batches = 4, 8
    sent = 0  # rows whose ingest request has been sent: no read may ever see more
    expected_kv: dict[int, int] = {}
    tokens: list[int] = []
    statuses: Counter[str] = Counter()
    writing_done = asyncio.Event()

    async def writer(w: int) -> None:
        nonlocal sent
        for i in range(batches):
            start = w * 1000 + i * 10
            sent += 10
            token = await ingest(client, headers, "events", records(start, 10, prefix=f"w{w}"))
            # Keyed rows: insert this batch, overwrite the previous one, delete some of the one before.
            ops: list[dict[str, Any]] = [{"idempotency_key": f"w{w}-{i}-u{k}", "op": "upsert", "payload": {"id": k, "v": i}}
                   for k in range(start - 10 if i else start, start + 10)]
            ops += [{"idempotency_key": f"w{w}-{i}-d{k}", "op": "delete", "payload": {"id": k}}
                    for k in range(start - 20, start - 10, 3) if i >= 2]
            for op in ops:
                if op["op"] == "delete":
                    expected_kv.pop(op["payload"]["id"], None)
                else:
                    expected_kv[op["payload"]["id"]] = op["payload"]["v"]
            tokens.append(max(token, await ingest(client, headers, "kv", ops)))
            seen = await query(client, headers, "SELECT count(*) FROM events WHERE id BETWEEN ? AND ?",
                               params=[start, start + 9], min_visibility_token=tokens[-1],
                               consistency_timeout_ms=20_000)
            assert seen["rows"] == [[10]], f"writer {w} batch {i} not visible at its own token"

    async def reader() -> None:
        last_count, last_token = 0, 0
        while not writing_done.is_set():
            body = await query(client, headers, "SELECT count(*) FROM events")
            count = body["rows"][0][0]
            assert last_count <= count <= sent, (last_count, count, sent)
            assert body["max_visibility_token"] >= last_token
            last_count, last_token = count, body["max_visibility_token"]
            await asyncio.sleep(0.005)

    async def compaction_loop() -> None:
        while not writing_done.is_set():
            result = await compactor.run(tenant_id)
            statuses.update(r["status"] for r in result["tables"].values())
            await asyncio.sleep(0.01)

    async def write_all() -> None:
        try:
            await asyncio.gather(*(writer(w) for w in range(writers)))
        finally:
            writing_done.set()

    async with running_coordinators(pool, store, listener):
        await asyncio.gather(write_all(), reader(), reader(), compaction_loop())
        final = max(tokens)
        body = await query(client, headers, "SELECT count(*), count(DISTINCT id) FROM events",
                           min_visibility_token=final, consistency_timeout_ms=20_000)
    statuses.update(r["status"] for r in (await compactor.run(tenant_id))["tables"].values())

    assert statuses["completed"] >= 1 and set(statuses) <= {"completed", "nothing_to_do"}, statuses
    total = writers * batches * 10
    assert body["rows"] == [[total, total]]
    ids = await query(client, headers, "SELECT id, count(*) AS n FROM events GROUP BY id ORDER BY id", row_limit=total)
    assert ids["rows"] == [[w * 1000 + k, 1] for w in range(writers) for k in range(batches * 10)]
    keyed = await query(client, headers, "SELECT id, v FROM kv ORDER BY id", row_limit=total)
    assert keyed["rows"] == [[k, v] for k, v in sorted(expected_kv.items())]
    await _assert_watermarks_monotonic(pool, tenant_id)
    await app_context.query.audit.flush()
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM query_audit WHERE tenant_id = %s AND status <> 'ok'",
                                 (tenant_id,))
        assert (await cur.fetchone() or {})["n"] == 0, "no query failed"


async def _assert_watermarks_monotonic(pool: CatalogPool, tenant_id: TenantId) -> None:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT snapshot_id, parent_snapshot_id, kind, max_visibility_token FROM snapshot"
            " WHERE tenant_id = %s ORDER BY snapshot_id", (tenant_id,))
        history = list(await cur.fetchall())
        cur = await conn.execute(
            "SELECT w.table_id, w.max_visibility_token FROM snapshot_table_watermark w"
            " JOIN snapshot s USING (snapshot_id) WHERE s.tenant_id = %s ORDER BY w.table_id, s.snapshot_id",
            (tenant_id,))
        table_marks = list(await cur.fetchall())
    marks = [s["max_visibility_token"] for s in history]
    assert marks == sorted(marks), "the tenant watermark never goes back"
    by_id = {s["snapshot_id"]: s for s in history}
    for snap in history:
        if snap["kind"] == "compaction":
            assert snap["max_visibility_token"] == by_id[snap["parent_snapshot_id"]]["max_visibility_token"]
    per_table: dict[int, list[int]] = {}
    for row in table_marks:
        per_table.setdefault(row["table_id"], []).append(row["max_visibility_token"])
    assert all(m == sorted(m) for m in per_table.values()), "no table watermark goes back"


async def _three_tables_with_three_files(
    client: httpx.AsyncClient, headers: dict[str, str], pool: CatalogPool, bus: PostgresBus,
    store: RetryingObjectStore,
) -> tuple[TenantId, dict[str, TableId]]:
    ids, tenant_id = {}, TenantId(0)
    for name in ("t1", "t2", "t3"):
        created = await create_table(client, headers, name)
        ids[name], tenant_id = TableId(created["table_id"]), TenantId(created["tenant_id"])
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    for round_ in range(3):
        for name in ids:
            await ingest(client, headers, name, records(round_ * 10, 10, prefix=f"r{round_}"))
        await coordinator.run_once()
    return tenant_id, ids


async def test_two_compactors_started_at_once_compact_each_table_exactly_once(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    headers = await make_key()
    tenant_id, ids = await _three_tables_with_three_files(client, headers, pool, bus, store)
    before = {name: await query(client, headers, f"SELECT id, name FROM {name} ORDER BY id, name") for name in ids}
    first, second = (Compactor(pool, store, EAGER, owner) for owner in ("compactor-a", "compactor-b"))

    results = await asyncio.gather(first.run(tenant_id), second.run(tenant_id))

    for name, table_id in ids.items():
        outcome = sorted(r["tables"][name]["status"] for r in results)
        assert outcome.count("completed") == 1, (name, outcome)
        assert set(outcome) - {"completed"} <= {"skipped", "nothing_to_do"}, (name, outcome)
        assert len(await live_paths(pool, tenant_id, table_id)) == 1
        after = await query(client, headers, f"SELECT id, name FROM {name} ORDER BY id, name")
        assert after["rows"] == before[name]["rows"]
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT table_id, status, count(*) AS n FROM compaction_run WHERE tenant_id = %s"
            " GROUP BY table_id, status", (tenant_id,))
        runs = {(r["table_id"], r["status"]): r["n"] for r in await cur.fetchall()}
        cur = await conn.execute(
            "SELECT f.table_id, count(DISTINCT s.snapshot_id) AS n FROM snapshot s"
            " JOIN snapshot_file f USING (snapshot_id) WHERE s.tenant_id = %s AND s.kind = 'compaction'"
            " GROUP BY f.table_id", (tenant_id,))
        compaction_snapshots = {r["table_id"]: r["n"] for r in await cur.fetchall()}
        cur = await conn.execute("SELECT count(*) AS n FROM job_lease WHERE tenant_id = %s", (tenant_id,))
        leases_left = (await cur.fetchone() or {})["n"]
    assert runs == {(table_id, "completed"): 1 for table_id in ids.values()}
    assert compaction_snapshots == dict.fromkeys(ids.values(), 1)
    assert leases_left == 0, "every job lease is released"


async def test_a_held_job_lease_makes_a_second_compactor_skip_until_released_or_expired(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    headers = await make_key()
    tenant_id, ids = await _three_tables_with_three_files(client, headers, pool, bus, store)
    async with pool.connection() as conn:
        t1 = await tables.get_table(conn, tenant_id, "t1")
        assert await maintenance.acquire_job(conn, tenant_id, t1.table_id, "compaction", "other-process", 3600)
    compactor = Compactor(pool, store, EAGER, "compactor-b")

    assert (await compactor.compact_table(tenant_id, t1))["status"] == "skipped"
    assert len(await live_paths(pool, tenant_id, ids["t1"])) == 3
    async with pool.connection() as conn:  # the other process died: its lease runs out
        await conn.execute("UPDATE job_lease SET lease_until = now() - interval '1 second' WHERE tenant_id = %s",
                           (tenant_id,))
    assert (await compactor.compact_table(tenant_id, t1))["status"] == "completed"
    assert len(await live_paths(pool, tenant_id, ids["t1"])) == 1


async def test_a_compactor_killed_before_publishing_leaves_only_orphans_that_gc_removes(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext,
) -> None:
    headers = await make_key()
    tenant_id, ids = await _three_tables_with_three_files(client, headers, pool, bus, store)
    sql = "SELECT id, name, amount FROM t1 ORDER BY id, name"
    before = await query(client, headers, sql)
    head_before = await head_id(pool, tenant_id)
    inputs = await live_paths(pool, tenant_id, ids["t1"])
    compactor = Compactor(pool, store, EAGER, "doomed")
    async with pool.connection() as conn:
        t1 = await tables.get_table(conn, tenant_id, "t1")
        live = await snapshots.current_files(conn, tenant_id, t1.table_id)
        run_id = await maintenance.start_run(conn, "compaction", tenant_id, "doomed", table_id=t1.table_id)
    chosen = plan(t1, live, EAGER)
    assert isinstance(chosen, CompactionPlan)

    outputs = await compactor.write_outputs(tenant_id, run_id, chosen, "doomed-run")  # ... and the process dies here

    assert outputs and all(store.head(o.path) is not None for o in outputs)
    assert await head_id(pool, tenant_id) == head_before
    assert await live_paths(pool, tenant_id, ids["t1"]) == inputs
    assert (await query(client, headers, sql))["rows"] == before["rows"]
    orphans = sorted(o.path for o in outputs)
    checked = await app_context.maintenance.integrity.run(tenant_id, deep=True)
    assert checked["orphans"] == orphans and checked["bad_files"] == []

    retention = app_context.maintenance.retention
    retention.policy = RetentionPolicy(gc_safety_age=timedelta(0))
    alive = await retention.run(tenant_id)
    assert alive["orphans_deleted"] == 0 and all(store.head(p) is not None for p in orphans), (
        "the writer's intents are unexpired: it could still publish them, so even a zero safety age keeps them")
    async with pool.connection() as conn:  # the dead process's lease runs out
        await conn.execute("UPDATE write_intent SET expires_at = clock_timestamp() - interval '1 second'"
                           " WHERE owner = 'doomed-run'")
    listing = [o.key for o in store.list(f"{tenant_id}/")]
    dry = await retention.run(tenant_id, dry_run=True)
    assert dry["orphans_deleted"] == len(orphans) and dry["files_deleted"] == 0
    assert [o.key for o in store.list(f"{tenant_id}/")] == listing, "a dry run deletes nothing"
    done = await retention.run(tenant_id)
    assert done["orphans_deleted"] == len(orphans) and done["files_deleted"] == 0 and done["failures"] == []
    assert all(store.head(p) is None for p in orphans)
    assert [o.key for o in store.list(f"{tenant_id}/")] == [k for k in listing if k not in orphans]
    assert (await query(client, headers, sql))["rows"] == before["rows"]
    assert (await app_context.maintenance.integrity.run(tenant_id, deep=True))["orphans"] == []


async def test_a_compaction_that_lost_its_lease_to_another_run_aborts_and_deletes_its_outputs(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    headers = await make_key()
    tenant_id, ids = await _three_tables_with_three_files(client, headers, pool, bus, store)
    sql = "SELECT id, name, amount FROM t2 ORDER BY id, name"
    before = await query(client, headers, sql)
    slow, fast = Compactor(pool, store, EAGER, "slow"), Compactor(pool, store, EAGER, "fast")
    async with pool.connection() as conn:
        t2 = await tables.get_table(conn, tenant_id, "t2")
        assert await maintenance.acquire_job(conn, tenant_id, t2.table_id, "compaction", "slow-run", 60)
        stale = plan(t2, await snapshots.current_files(conn, tenant_id, t2.table_id), EAGER)
    assert isinstance(stale, CompactionPlan)
    stale_outputs = await slow.write_outputs(tenant_id, 999_001, stale, "slow-run")  # the slow merge finished...
    async with pool.connection() as conn:  # ... after its lease ran out,
        await conn.execute("UPDATE job_lease SET lease_until = clock_timestamp() - interval '1 second'"
                           " WHERE owner = 'slow-run'")
    assert (await fast.compact_table(tenant_id, t2))["status"] == "completed"  # ... and another run won
    head_before = await head_id(pool, tenant_id)
    live_before = await live_paths(pool, tenant_id, ids["t2"])

    assert await slow.publish(tenant_id, stale, stale_outputs, "slow-run") == "aborted"

    assert await head_id(pool, tenant_id) == head_before, "no snapshot was published"
    assert await live_paths(pool, tenant_id, ids["t2"]) == live_before
    assert all(store.head(o.path) is None for o in stale_outputs), "the loser's outputs are deleted"
    assert (await query(client, headers, sql))["rows"] == before["rows"]
    async with pool.connection() as conn:
        known = await maintenance.known_paths(conn, tenant_id)
    assert not known & {o.path for o in stale_outputs}


async def test_a_second_run_of_the_same_service_skips_a_table_its_first_run_holds(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext,
) -> None:
    headers = await make_key()
    tenant_id, _ = await _three_tables_with_three_files(client, headers, pool, bus, store)
    compactor = app_context.maintenance.compactor  # what every /v1/compaction/run of this process uses
    compactor.policy = EAGER
    async with pool.connection() as conn:
        t1 = await tables.get_table(conn, tenant_id, "t1")
        # A first run (e.g. the compactor loop, or a concurrent admin request) is working on t1.
        assert await maintenance.acquire_job(conn, tenant_id, t1.table_id, "compaction", compactor.owner, 3600)

    assert (await compactor.compact_table(tenant_id, t1))["status"] == "skipped"

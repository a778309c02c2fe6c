"""The commit protocol under forced interleavings (issue: one commit protocol and the audit's cases).

Each test forces the race the audit found — a lock held by the test's own transaction, a writer
stalled at a hook past its lease, a stalled backfill — and checks the outcome a user relies on:
no acknowledged write lost, no deleted key back, no snapshot naming a file GC deleted.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import httpx
import pytest

from duckmesh.api.context import AppContext
from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog import maintenance, snapshots, tables
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator import worker
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.domain import TenantId
from duckmesh.maintenance import compaction
from duckmesh.maintenance.compaction import CompactionPolicy, Compactor
from duckmesh.maintenance.retention import RetentionPolicy
from duckmesh.storage.base import ObjectStore
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import accepted_records, create_table, head_watermark, records, wait_until_blocked
from tests.helpers import query_ok as query

KV = [{"name": "id", "type": "int64", "nullable": False}, {"name": "v", "type": "int64"}]
GC_NOW = RetentionPolicy(keep_snapshots=1, snapshot_min_age=timedelta(0), gc_safety_age=timedelta(0))


async def ingest(client: httpx.AsyncClient, headers: dict[str, str], table: str, body: list[dict[str, Any]]) -> int:
    response = await client.post(f"/v1/ingest/{table}", headers=headers, json={"records": body})
    assert response.status_code == 200, response.text
    return int(response.json()["max_visibility_token"])


class GatedStore:
    """A real store whose puts block (in their worker thread) while ``gate`` is closed: a writer
    frozen right after its object landed and before it commits (a SIGSTOP, a VM pause)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.gate = threading.Event()
        self.gate.set()
        self.frozen = threading.Event()

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)
        if not self.gate.is_set():
            self.frozen.set()
            assert self.gate.wait(30)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def _no_extension(work: Any, extend: Any, period: float) -> Any:
    """A frozen process extends nothing: its lease and write intents run out while it is stopped."""
    return await work


async def test_a_coordinator_stalled_past_its_lease_cannot_publish_a_file_gc_deleted(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext, monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = await make_key()
    table = await create_table(client, headers)
    token = await ingest(client, headers, "events", records(0, 20))
    gated = GatedStore(store)
    gated.gate.clear()
    monkeypatch.setattr(worker, "while_extending", _no_extension)
    stalled = Coordinator(pool, bus, gated, CoordinatorConfig(owner="stalled", lease_seconds=0.5))  # type: ignore[arg-type]

    run = asyncio.create_task(stalled.run_once())
    assert await asyncio.to_thread(gated.frozen.wait, 10)
    await asyncio.sleep(0.7)  # past the lease by the database clock; nobody took the events over yet
    gc = await app_context.maintenance.retention.run(TenantId(table["tenant_id"]))
    assert gc["status"] == "completed"
    app_context.maintenance.retention.policy = GC_NOW
    await app_context.maintenance.retention.run(TenantId(table["tenant_id"]))
    gated.gate.set()  # SIGCONT
    await run

    async with pool.connection() as conn:
        known = await maintenance.known_paths(conn, TenantId(table["tenant_id"]))
    assert all(store.head(path) is not None for path in known), "no snapshot names a file GC deleted"
    await Coordinator(pool, bus, store, CoordinatorConfig(owner="rescuer")).resolve_expired()
    await Coordinator(pool, bus, store, CoordinatorConfig(owner="rescuer")).run_once()
    body = await query(client, headers, "SELECT count(*), count(DISTINCT id) FROM events",
                       min_visibility_token=token, consistency_timeout_ms=5000)
    assert body["rows"] == [[20, 20]], "every acknowledged row, exactly once"
    checked = await app_context.maintenance.integrity.run(TenantId(table["tenant_id"]))
    assert checked["bad_files"] == []


async def test_a_compaction_stalled_past_its_lease_cannot_publish_outputs_gc_deleted(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext, monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = await make_key()
    table = await create_table(client, headers)
    tenant_id = TenantId(table["tenant_id"])
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    for batch in range(3):
        await ingest(client, headers, "events", records(batch * 10, 10, prefix=f"b{batch}"))
        await coordinator.run_once()
    before = await query(client, headers, "SELECT id, name FROM events ORDER BY id")
    gated = GatedStore(store)
    gated.gate.clear()
    monkeypatch.setattr(compaction, "while_extending", _no_extension)
    stalled = Compactor(pool, gated, CompactionPolicy(min_input_files=2, lease_seconds=0.5), "stalled")  # type: ignore[arg-type]
    async with pool.connection() as conn:
        events = await tables.get_table(conn, tenant_id, "events")

    run = asyncio.create_task(stalled.compact_table(tenant_id, events))
    assert await asyncio.to_thread(gated.frozen.wait, 10)
    await asyncio.sleep(0.7)
    app_context.maintenance.retention.policy = GC_NOW
    await app_context.maintenance.retention.run(tenant_id)  # collects the stalled run's outputs
    gated.gate.set()
    result = await run

    assert result["status"] == "aborted"
    assert (await query(client, headers, "SELECT id, name FROM events ORDER BY id"))["rows"] == before["rows"]
    checked = await app_context.maintenance.integrity.run(tenant_id, deep=True)
    assert checked["bad_files"] == []


async def _expiry_in_flight(pool: CatalogPool, snapshot_id: int) -> Any:
    """A retention expiry holding the snapshot row (as ``expire_snapshots`` does), not yet committed."""
    conn_cm = pool.connection()
    conn = await conn_cm.__aenter__()
    tx_cm = conn.transaction()
    await tx_cm.__aenter__()
    await conn.execute("SELECT 1 FROM snapshot WHERE snapshot_id = %s FOR UPDATE", (snapshot_id,))
    await conn.execute("UPDATE snapshot SET expired_at = now() WHERE snapshot_id = %s", (snapshot_id,))

    async def finish() -> None:
        await tx_cm.__aexit__(None, None, None)
        await conn_cm.__aexit__(None, None, None)

    return finish


async def _published_history(client: httpx.AsyncClient, headers: dict[str, str], pool: CatalogPool,
                             bus: PostgresBus, store: RetryingObjectStore) -> tuple[int, int]:
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    await ingest(client, headers, "events", records(0, 5))
    await coordinator.run_once()
    target = (await query(client, headers, "SELECT count(*) FROM events"))["snapshot_id"]
    await ingest(client, headers, "events", records(5, 5))
    await coordinator.run_once()
    head = (await query(client, headers, "SELECT count(*) FROM events"))["snapshot_id"]
    return target, head


async def test_a_restore_racing_the_expiry_of_its_target_is_refused_instead_of_emptying_tables(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    headers = await make_key()
    table = await create_table(client, headers)
    target, head = await _published_history(client, headers, pool, bus, store)
    finish_expiry = await _expiry_in_flight(pool, target)

    restore = asyncio.create_task(client.post("/v1/snapshots/restore", headers=headers, json={"snapshot_id": target}))
    await wait_until_blocked(pool)
    await finish_expiry()
    response = await restore

    assert response.status_code == 404 and response.json()["error_code"] == "SNAPSHOT_NOT_FOUND"
    assert (await head_watermark(pool, table["tenant_id"]))[0] == head, "nothing was published"
    assert (await query(client, headers, "SELECT count(*) FROM events"))["rows"] == [[10]]


async def test_a_pin_racing_the_expiry_of_its_snapshot_is_refused_instead_of_pinning_nothing(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    target, _ = await _published_history(client, headers, pool, bus, store)
    finish_expiry = await _expiry_in_flight(pool, target)

    pin = asyncio.create_task(client.post("/v1/snapshots/pin", headers=headers,
                                          json={"snapshot_id": target, "reason": "audit"}))
    await wait_until_blocked(pool)
    await finish_expiry()
    response = await pin

    assert response.status_code == 404 and response.json()["error_code"] == "SNAPSHOT_NOT_FOUND"
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM snapshot_pin WHERE snapshot_id = %s", (target,))
        assert (await cur.fetchone() or {})["n"] == 0


async def test_an_ingest_racing_a_drop_is_refused_and_never_lands_in_the_dropped_table(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    headers = await make_key()
    table = await create_table(client, headers)
    async with pool.connection() as conn, conn.transaction():  # a DROP in flight holds the table row
        await conn.execute("SELECT 1 FROM table_def WHERE table_id = %s FOR UPDATE", (table["table_id"],))
        await conn.execute("UPDATE table_def SET dropped_at = clock_timestamp() WHERE table_id = %s",
                           (table["table_id"],))
        late = asyncio.create_task(client.post("/v1/ingest/events", headers=headers,
                                               json={"records": records(0, 3)}))
        await wait_until_blocked(pool)
    response = await late

    assert response.status_code == 404 and response.json()["error_code"] == "TABLE_NOT_FOUND"
    assert await accepted_records(pool, table_id=table["table_id"]) == 0, "nothing was acknowledged into the dropped table"


async def test_events_claimed_when_their_table_is_dropped_are_failed_not_published(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    headers = await make_key()
    table = await create_table(client, headers)
    token = await ingest(client, headers, "events", records(0, 4))
    held = await bus.claim("c", 100, 1 << 20, 30)
    assert held is not None
    assert (await client.delete("/v1/tables/events", headers=headers)).status_code == 200

    await Coordinator(pool, bus, store, CoordinatorConfig(owner="c")).process(held)

    async with pool.connection() as conn:
        cur = await conn.execute("SELECT state, failure_reason FROM ingest_segment WHERE table_id = %s",
                                 (table["table_id"],))
        states = {(r["state"], r["failure_reason"]) for r in await cur.fetchall()}
        cur = await conn.execute("SELECT count(*) AS n FROM data_file WHERE table_id = %s", (table["table_id"],))
        files = (await cur.fetchone() or {})["n"]
    assert states == {("failed", "table_dropped")} and files == 0
    assert (await head_watermark(pool, table["tenant_id"]))[1] >= token


async def test_a_stalled_backfill_publishing_an_older_version_never_brings_a_deleted_key_back(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from duckmesh.ingest import backfill as backfill_module

    headers = await make_key()
    kv = await create_table(client, headers, "kv", columns=KV, primary_key=["id"])
    gate, reached = threading.Event(), threading.Event()
    write = backfill_module.write_parquet

    def stalled_write(table: Any) -> Any:
        reached.set()
        assert gate.wait(30)
        return write(table)

    monkeypatch.setattr(backfill_module, "write_parquet", stalled_write)
    loading = asyncio.create_task(client.post("/v1/tables/kv/backfill?backfill_id=old", headers=headers,
                                              content=b'{"id": 1, "v": 9}\n'))
    assert await asyncio.to_thread(reached.wait, 10)  # token 1 is reserved for the backfill's version of key 1
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    await ingest(client, headers, "kv", [{"idempotency_key": "d1", "op": "delete", "payload": {"id": 1}}])
    await coordinator.run_once()
    last = await ingest(client, headers, "kv", [{"idempotency_key": "u2", "op": "upsert", "payload": {"id": 2, "v": 2}}])
    await coordinator.run_once()
    app_context.maintenance.compactor.policy = CompactionPolicy(min_input_files=2)
    compacted = await app_context.maintenance.compact(TenantId(kv["tenant_id"]), "kv")
    assert compacted["tables"]["kv"]["status"] == "completed"
    assert compacted["tables"]["kv"]["drop_tombstones"] is False, "a pending reservation holds an older version"
    gate.set()
    assert (await loading).status_code == 200

    body = await query(client, headers, "SELECT id, v FROM kv ORDER BY id", min_visibility_token=last)
    assert body["rows"] == [[2, 2]], "the delete (token 2) outranks the backfilled version (token 1)"


async def test_a_lease_extension_after_one_tenant_committed_keeps_the_rest_of_the_claim(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    first, second = await make_key("first"), await make_key("second")
    for headers in (first, second):
        await create_table(client, headers)
    await ingest(client, first, "events", records(0, 5))
    token = await ingest(client, second, "events", records(0, 5))
    slow = GatedStore(store)
    coordinator = Coordinator(pool, bus, slow, CoordinatorConfig(owner="c", lease_seconds=0.6))  # type: ignore[arg-type]
    original_put = slow.put
    calls = 0

    def put_slowly_after_the_first(key: str, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:  # the second tenant's file: longer than the whole lease, extensions must carry it
            threading.Event().wait(1.5)
        original_put(key, data)

    slow.put = put_slowly_after_the_first  # type: ignore[method-assign]

    async def lease_recovery() -> None:
        for _ in range(12):
            await bus.requeue_expired(5)
            await asyncio.sleep(0.15)

    await asyncio.gather(coordinator.run_once(), lease_recovery())

    body = await query(client, second, "SELECT count(*) FROM events", min_visibility_token=token,
                       consistency_timeout_ms=100)
    assert body["rows"] == [[5]]
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT DISTINCT state, attempts FROM ingest_segment")
        assert {(r["state"], r["attempts"]) for r in await cur.fetchall()} == {("committed", 1)}


async def test_a_query_at_the_head_holds_its_snapshot_while_retention_runs(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.integration.test_retention_gc import gate_engine

    headers = await make_key()
    table = await create_table(client, headers)
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    for batch in range(2):
        await ingest(client, headers, "events", records(batch * 10, 10, prefix=f"b{batch}"))
        await coordinator.run_once()
    in_scan, release = gate_engine(app_context, monkeypatch)
    reading = asyncio.create_task(query(client, headers, "SELECT count(*) FROM events"))
    assert await asyncio.to_thread(in_scan.wait, 30)
    app_context.maintenance.compactor.policy = CompactionPolicy(min_input_files=2)
    await app_context.maintenance.compact(TenantId(table["tenant_id"]), "events")
    await ingest(client, headers, "events", records(100, 1, prefix="later"))
    await coordinator.run_once()

    app_context.maintenance.retention.policy = GC_NOW
    gc = await app_context.maintenance.retention.run(TenantId(table["tenant_id"]))
    release.set()
    body = await reading

    assert gc["snapshots_expired"] >= 1 and body["rows"] == [[20]], "the head query read its intact files"
    async with pool.connection() as conn:
        kept = await snapshots.get_snapshot(conn, TenantId(table["tenant_id"]), body["snapshot_id"])
    assert kept.snapshot_id == body["snapshot_id"], "retention kept the snapshot the query leased"


async def test_a_missing_data_file_is_reported_as_such_naming_table_and_path(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    headers = await make_key()
    table = await create_table(client, headers)
    await ingest(client, headers, "events", records(0, 3))
    await Coordinator(pool, bus, store, CoordinatorConfig(owner="c")).run_once()
    [path] = [o.key for o in store.list(f"{table['tenant_id']}/{table['table_id']}/")]
    store.delete(path)

    response = await client.post("/v1/query", headers=headers, json={"sql": "SELECT count(*) FROM events"})

    assert response.status_code == 500
    error = response.json()
    assert error["error_code"] == "DATA_FILE_MISSING"
    assert error["context"] == {"table": "events", "path": path} and "integrity" in error["message"]

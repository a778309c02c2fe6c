"""Retention and garbage collection (MAINTENANCE.md; DATA_MODEL.md invariants 5 and 6):
GC never removes a file a retained, pinned or in-use snapshot can reach; safety age; dry runs;
idempotent runs and deletions; ingest-bus cleanup; table retention by event time."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from duckmesh.api.context import AppContext
from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog import maintenance, snapshots
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.domain import SnapshotKind, TableId, TenantId
from duckmesh.maintenance.compaction import CompactionPolicy
from duckmesh.maintenance.retention import RetentionPolicy
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table, records

SQL = "SELECT id, name, amount FROM events ORDER BY id, name"
AGGRESSIVE = RetentionPolicy(keep_snapshots=1, snapshot_min_age=timedelta(0), gc_safety_age=timedelta(0),
                             idempotency_window=timedelta(days=1))


@dataclass
class Tenant:
    """One tenant with an ``events`` table, its snapshot history and what each snapshot answered."""

    client: httpx.AsyncClient
    headers: dict[str, str]
    pool: CatalogPool
    store: RetryingObjectStore
    ctx: AppContext
    tenant_id: TenantId
    table_id: TableId
    coordinator: Coordinator
    answers: dict[int, list[list[Any]]] = field(default_factory=dict)
    rounds: int = 0

    async def ingest(self, count: int = 10, event_time: str | None = None) -> int:
        body = records(self.rounds * 100, count, prefix=f"r{self.rounds}")
        for record in body:
            if event_time is not None:
                record["event_time"] = event_time
        self.rounds += 1
        response = await self.client.post("/v1/ingest/events", headers=self.headers, json={"records": body})
        assert response.status_code in (200, 202), response.text
        await self.coordinator.run_once()
        return await self.record_head()

    async def compact(self) -> int:
        self.ctx.maintenance.compactor.policy = CompactionPolicy(min_input_files=2)
        result = await self.ctx.maintenance.compact(self.tenant_id, "events")
        assert result["tables"]["events"]["status"] == "completed", result
        return await self.record_head()

    async def record_head(self) -> int:
        async with self.pool.connection() as conn:
            head = (await snapshots.head(conn, self.tenant_id)).snapshot_id
        assert head is not None
        self.answers[head] = await self.query(head)
        return head

    async def query(self, snapshot_id: int, sql: str = SQL) -> list[list[Any]]:
        response = await self.client.post("/v1/query", headers=self.headers,
                                          json={"sql": sql, "snapshot_id": snapshot_id, "row_limit": 100_000})
        assert response.status_code == 200, response.text
        return list(response.json()["rows"])

    async def status_of(self, snapshot_id: int) -> int:
        response = await self.client.post("/v1/query", headers=self.headers,
                                          json={"sql": "SELECT 1", "snapshot_id": snapshot_id})
        return response.status_code

    async def retain(self, policy: RetentionPolicy | None = None, dry_run: bool = False) -> dict[str, Any]:
        if policy is not None:
            self.ctx.maintenance.retention.policy = policy
        result = await self.ctx.maintenance.retain(self.tenant_id, dry_run)
        assert result["status"] == "completed" and result["failures"] == [], result
        return result

    async def files_of(self, snapshot_id: int) -> set[str]:
        async with self.pool.connection() as conn:
            return {f.path for f in await snapshots.live_files(conn, self.tenant_id, snapshot_id)}

    async def retained(self) -> list[int]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT snapshot_id FROM snapshot WHERE tenant_id = %s AND expired_at IS NULL ORDER BY snapshot_id",
                (self.tenant_id,))
            return [r["snapshot_id"] for r in await cur.fetchall()]

    async def assert_retained_snapshots_intact(self) -> None:
        """Invariants 5 and 6: every retained snapshot's files exist and it answers as before."""
        for snapshot_id in await self.retained():
            assert all(self.store.head(p) is not None for p in await self.files_of(snapshot_id)), snapshot_id
            if snapshot_id in self.answers:
                assert await self.query(snapshot_id) == self.answers[snapshot_id], snapshot_id

    async def state(self) -> dict[str, Any]:
        """Everything a retention run may change: catalog rows and the object listing."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT"
                " (SELECT count(*) FROM snapshot WHERE tenant_id = %(t)s) AS snapshots,"
                " (SELECT array_agg(snapshot_id ORDER BY snapshot_id) FROM snapshot"
                "   WHERE tenant_id = %(t)s AND expired_at IS NULL) AS retained,"
                " (SELECT count(*) FROM data_file WHERE tenant_id = %(t)s) AS data_files,"
                " (SELECT count(*) FROM file_live_range WHERE tenant_id = %(t)s) AS live_ranges,"
                " (SELECT count(*) FROM snapshot_file f JOIN snapshot s USING (snapshot_id)"
                "   WHERE s.tenant_id = %(t)s) AS change_rows,"
                " (SELECT count(*) FROM ingest_segment WHERE tenant_id = %(t)s) AS segments,"
                " (SELECT count(*) FROM ingest_key WHERE tenant_id = %(t)s) AS idempotency_keys,"
                " (SELECT head_snapshot_id FROM tenant_head WHERE tenant_id = %(t)s) AS head",
                {"t": self.tenant_id})
            row = dict(await cur.fetchone() or {})
        row["objects"] = [(o.key, o.size) for o in self.store.list(f"{self.tenant_id}/")]
        return row


async def new_tenant(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    ctx: AppContext,
) -> Tenant:
    headers = await make_key()
    created = await create_table(client, headers)
    return Tenant(client, headers, pool, store, ctx, TenantId(created["tenant_id"]), TableId(created["table_id"]),
                  Coordinator(pool, bus, store, CoordinatorConfig(owner="c")))


def gate_engine(app_context: AppContext, monkeypatch: Any) -> tuple[threading.Event, threading.Event]:
    """Hold every query inside the engine: ``in_scan`` is set once one is there (its snapshot
    leased and bound), and it runs only after ``release`` is set."""
    engine = app_context.query._engine
    in_scan, release = threading.Event(), threading.Event()
    run = engine.run

    def gated_run(*args: Any, **kwargs: Any) -> Any:
        in_scan.set()
        assert release.wait(30)
        return run(*args, **kwargs)

    monkeypatch.setattr(engine, "run", gated_run)
    return in_scan, release


async def test_gc_keeps_every_file_of_the_newest_snapshots_and_deletes_exactly_the_unreachable_ones(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext,
) -> None:
    t = await new_tenant(client, make_key, pool, bus, store, app_context)
    s1, s2 = await t.ingest(), await t.ingest()
    c3 = await t.compact()
    s4, s5 = await t.ingest(), await t.ingest()
    c6 = await t.compact()
    every_file = set().union(*[await t.files_of(s) for s in (s1, s2, c3, s4, s5, c6)])
    reachable = await t.files_of(s5) | await t.files_of(c6)

    result = await t.retain(RetentionPolicy(keep_snapshots=2, snapshot_min_age=timedelta(0),
                                            gc_safety_age=timedelta(0)))

    assert await t.retained() == [s5, c6]
    # Expired: the table's creation snapshot and s1..s4.
    assert result["snapshots_expired"] == 5 and result["files_deleted"] == len(every_file - reachable) == 2
    assert {p for p in every_file if store.head(p) is not None} == reachable
    await t.assert_retained_snapshots_intact()
    assert [await t.status_of(s) for s in (s1, s2, c3, s4)] == [404] * 4


async def test_gc_keeps_a_pinned_snapshot_until_it_is_unpinned(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext,
) -> None:
    t = await new_tenant(client, make_key, pool, bus, store, app_context)
    s1, s2, s3 = await t.ingest(), await t.ingest(), await t.ingest()
    await t.compact()
    pinned_files = await t.files_of(s1)
    pin = await client.post("/v1/snapshots/pin", headers=t.headers, json={"snapshot_id": s1, "reason": "audit"})
    assert pin.status_code == 201, pin.text
    stale_pin = await client.post("/v1/snapshots/pin", headers=t.headers, json={
        "snapshot_id": s2, "reason": "ran out", "expires_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()})
    assert stale_pin.status_code == 201, stale_pin.text

    first = await t.retain(AGGRESSIVE)

    # Expired: the creation snapshot, s2 (its pin ran out) and s3.
    assert first["snapshots_expired"] == 3 and s1 in await t.retained(), "an expired pin keeps nothing"
    assert all(store.head(p) is not None for p in pinned_files)
    assert await t.query(s1) == t.answers[s1]
    await t.assert_retained_snapshots_intact()

    unpin = await client.delete(f"/v1/snapshots/pin/{s1}", headers=t.headers)
    assert unpin.status_code == 204, unpin.text
    second = await t.retain()
    assert second["snapshots_expired"] == 1 and second["files_deleted"] == len(pinned_files)
    assert all(store.head(p) is None for p in pinned_files)
    assert await t.status_of(s1) == 404 and await t.status_of(s3) == 404


async def test_gc_keeps_a_snapshot_while_a_query_lease_holds_it(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext,
) -> None:
    t = await new_tenant(client, make_key, pool, bus, store, app_context)
    s1, s2, _ = await t.ingest(), await t.ingest(), await t.ingest()
    await t.compact()
    held = await t.files_of(s2)
    async with pool.connection() as conn:
        lease, _ = await snapshots.acquire_lease(conn, t.tenant_id, s2, "slow-query", 60)
        await snapshots.acquire_lease(conn, t.tenant_id, s1, "finished-query", -1)  # already ran out

    first = await t.retain(AGGRESSIVE)

    assert s2 in await t.retained() and s1 not in await t.retained()
    assert first["snapshots_expired"] == 3, "the creation snapshot, s1 and s3"
    assert all(store.head(p) is not None for p in held)
    assert await t.query(s2) == t.answers[s2]
    await t.assert_retained_snapshots_intact()

    async with pool.connection() as conn:
        await snapshots.release_leases(conn, [lease])
    second = await t.retain()
    assert second["snapshots_expired"] == 1 and second["files_deleted"] == len(held)
    assert all(store.head(p) is None for p in held)


async def test_a_slow_query_on_an_old_snapshot_returns_its_rows_while_gc_runs(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext, monkeypatch: Any,
) -> None:
    t = await new_tenant(client, make_key, pool, bus, store, app_context)
    old = [await t.ingest(), await t.ingest()][0]
    await t.compact()
    old_files = await t.files_of(old)
    # The scan has started (the query holds its snapshot) and stays in progress until GC is done.
    in_scan, release = gate_engine(app_context, monkeypatch)
    heavy = ("SELECT e.id, count(*) AS n FROM events e, range(3000000) r(x)"
             " WHERE r.x % 1000 = e.id % 1000 GROUP BY e.id ORDER BY e.id")
    slow = asyncio.create_task(t.query(old, heavy))
    assert await asyncio.to_thread(in_scan.wait, 30)

    during = await t.retain(AGGRESSIVE)
    release.set()
    rows = await slow

    assert rows == [[i, 3000] for i in range(10)], "the in-flight query read intact files"
    assert old in await t.retained() and during["snapshots_expired"] == 2, "the creation snapshot and s2"
    assert all(store.head(p) is not None for p in old_files)
    after = await t.retain()  # the query ended and gave its lease back
    assert old not in await t.retained() and after["files_deleted"] == len(old_files)


async def test_a_file_that_left_the_live_set_recently_is_kept_even_when_its_snapshots_expired(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext,
) -> None:
    t = await new_tenant(client, make_key, pool, bus, store, app_context)
    s1, s2 = await t.ingest(), await t.ingest()
    await t.compact()
    removed = (await t.files_of(s1)) | (await t.files_of(s2))
    careful = RetentionPolicy(keep_snapshots=1, snapshot_min_age=timedelta(0), gc_safety_age=timedelta(hours=1))

    young = await t.retain(careful)

    assert young["snapshots_expired"] == 3 and young["files_deleted"] == 0
    assert all(store.head(p) is not None for p in removed)
    await asyncio.sleep(1.2)  # let the removal grow older than a short safety age
    short = RetentionPolicy(keep_snapshots=1, snapshot_min_age=timedelta(0), gc_safety_age=timedelta(seconds=1))
    old = await t.retain(short)
    assert old["files_deleted"] == len(removed) == 2
    assert all(store.head(p) is None for p in removed)
    await t.assert_retained_snapshots_intact()


async def test_dry_runs_change_nothing_and_every_run_is_idempotent(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext,
) -> None:
    t = await new_tenant(client, make_key, pool, bus, store, app_context)
    await t.ingest(event_time="2020-01-01T00:00:00Z")
    await t.ingest(), await t.ingest()
    await t.compact()
    await t.ingest()
    async with pool.connection() as conn:
        await conn.execute("UPDATE table_def SET retention_days = 30 WHERE table_id = %s", (t.table_id,))
        await conn.execute("UPDATE ingest_segment SET resolved_at = now() - interval '2 days'"
                           " WHERE tenant_id = %s AND min_token = 11", (t.tenant_id,))  # round r1's records
    store.put(f"{t.tenant_id}/{t.table_id}/date=2024-01-01/part-crashed-0000.parquet", b"PAR1 left by a crash")
    t.ctx.maintenance.retention.policy = AGGRESSIVE
    before = await t.state()

    dry = await t.retain(dry_run=True)

    assert await t.state() == before, "a dry run changes nothing"
    assert dry["dry_run"] is True
    assert dry["files_expired_by_table_retention"] == 1 and dry["snapshots_expired"] == 5
    assert dry["orphans_deleted"] == 1 and dry["events_deleted"] == 10
    first = await t.retain()
    assert first["files_expired_by_table_retention"] == 1 and first["orphans_deleted"] == 1
    assert first["events_deleted"] == 10 and first["files_deleted"] > 0
    after_first = await t.state()
    assert after_first != before
    second = await t.retain()
    assert {k: second[k] for k in ("files_expired_by_table_retention", "snapshots_expired", "files_deleted",
                                   "bytes_freed", "orphans_deleted", "events_deleted")} == dict.fromkeys(
        ("files_expired_by_table_retention", "snapshots_expired", "files_deleted", "bytes_freed", "orphans_deleted",
         "events_deleted"), 0)
    assert await t.state() == after_first, "a second run changes nothing more"
    await t.assert_retained_snapshots_intact()
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT dry_run, status, summary FROM gc_run WHERE tenant_id = %s ORDER BY run_id",
                                 (t.tenant_id,))
        runs = list(await cur.fetchall())
    assert [(r["dry_run"], r["status"]) for r in runs] == [(True, "completed"), (False, "completed"),
                                                           (False, "completed")]
    assert [r["summary"]["files_deleted"] for r in runs] == [dry["files_deleted"], first["files_deleted"], 0]


async def test_a_file_already_gone_from_storage_is_no_failure_and_its_catalog_row_is_removed(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext,
) -> None:
    t = await new_tenant(client, make_key, pool, bus, store, app_context)
    await t.ingest(), await t.ingest()
    await t.compact()
    await t.retain(RetentionPolicy(keep_snapshots=1, snapshot_min_age=timedelta(0), gc_safety_age=timedelta(hours=1)))
    async with pool.connection() as conn:
        doomed = await maintenance.deletable_files(conn, t.tenant_id, timedelta(0))
    assert len(doomed) == 2
    store.delete(doomed[0].path)  # e.g. a previous run deleted the object and died before the catalog row
    store.delete(doomed[0].path)  # deleting twice is fine too

    result = await t.retain(AGGRESSIVE)

    assert result["files_deleted"] == 2 and result["failures"] == []
    async with pool.connection() as conn:
        known = await maintenance.known_paths(conn, t.tenant_id)
        assert await maintenance.deletable_files(conn, t.tenant_id, timedelta(0)) == []
    assert not known & {d.path for d in doomed}
    assert all(store.head(d.path) is None for d in doomed)
    await t.assert_retained_snapshots_intact()


async def test_bus_cleanup_deletes_only_segments_and_keys_older_than_the_idempotency_window(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext,
) -> None:
    t = await new_tenant(client, make_key, pool, bus, store, app_context)

    async def send(prefix: str) -> dict[str, Any]:
        response = await client.post("/v1/ingest/events", headers=t.headers,
                                     json={"records": records(0, 5, prefix=prefix)})
        assert response.status_code in (200, 202), response.text
        return dict(response.json())

    await send("old")
    await t.coordinator.run_once()
    async with pool.connection() as conn:  # two days pass
        await conn.execute("UPDATE ingest_segment SET resolved_at = now() - interval '2 days' WHERE tenant_id = %s",
                           (t.tenant_id,))
        await conn.execute("UPDATE snapshot SET created_at = created_at - interval '2 days' WHERE tenant_id = %s",
                           (t.tenant_id,))
    await send("recent")
    await t.coordinator.run_once()
    await send("pending")
    async with pool.connection() as conn:
        await conn.execute("UPDATE ingest_segment SET ingested_at = now() - interval '2 days'"
                           " WHERE tenant_id = %s AND state = 'accepted'", (t.tenant_id,))
    window = RetentionPolicy(idempotency_window=timedelta(days=1))

    dry = await t.retain(window, dry_run=True)
    result = await t.retain()

    assert dry["events_deleted"] == result["events_deleted"] == 5
    assert result["bus_cleanup"]["idempotency_keys"] == 5
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT split_part(idempotency_key, '-', 1) AS batch, count(*) AS n"
                                 " FROM ingest_key WHERE tenant_id = %s GROUP BY 1", (t.tenant_id,))
        keys = {r["batch"]: r["n"] for r in await cur.fetchall()}
        cur = await conn.execute("SELECT state, sum(record_count) AS n FROM ingest_segment WHERE tenant_id = %s"
                                 " GROUP BY 1", (t.tenant_id,))
        states = {r["state"]: r["n"] for r in await cur.fetchall()}
    assert keys == {"recent": 5, "pending": 5} and states == {"committed": 5, "accepted": 5}
    assert (await send("recent"))["duplicate_count"] == 5, "keys inside the window still deduplicate"
    assert (await send("old"))["accepted_count"] == 5, "keys past the window are forgotten"


async def test_table_retention_drops_whole_old_files_in_a_new_snapshot_with_the_same_watermark(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext,
) -> None:
    t = await new_tenant(client, make_key, pool, bus, store, app_context)
    first = await t.ingest(5, event_time="2020-01-01T00:00:00Z")
    await t.ingest(5, event_time=(datetime.now(UTC) - timedelta(days=3)).isoformat())
    before = await t.ingest(5)
    old_files = await t.files_of(first)
    async with pool.connection() as conn:
        await conn.execute("UPDATE table_def SET retention_days = 1 WHERE table_id = %s", (t.table_id,))

    result = await t.retain(RetentionPolicy())

    assert result["files_expired_by_table_retention"] == 2
    after = await t.record_head()
    async with pool.connection() as conn:
        parent = await snapshots.get_snapshot(conn, t.tenant_id, before)
        dropped = await snapshots.get_snapshot(conn, t.tenant_id, after)
        assert dropped.parent_snapshot_id == before and dropped.kind is SnapshotKind.COMPACTION
        assert dropped.max_visibility_token == parent.max_visibility_token
        assert await snapshots.table_watermarks(conn, after) == await snapshots.table_watermarks(conn, before)
    assert t.answers[after] == [row for row in t.answers[before] if row[0] >= 200]
    assert await t.query(first) == t.answers[first], "older snapshots still travel back to the old rows"
    assert all(store.head(p) is not None for p in old_files), "the files wait for snapshot expiry and GC"
    assert (await t.retain())["files_expired_by_table_retention"] == 0


async def test_a_dry_run_reports_the_files_the_real_run_deletes(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext,
) -> None:
    t = await new_tenant(client, make_key, pool, bus, store, app_context)
    await t.ingest(), await t.ingest()
    await t.compact()
    dry = await t.retain(AGGRESSIVE, dry_run=True)
    real = await t.retain()
    assert real["files_deleted"] == 2
    assert (dry["snapshots_expired"], dry["files_deleted"], dry["bytes_freed"]) == (
        real["snapshots_expired"], real["files_deleted"], real["bytes_freed"])


async def test_a_query_racing_gc_on_an_old_snapshot_answers_its_rows_or_404_never_500(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext, monkeypatch: Any,
) -> None:
    t = await new_tenant(client, make_key, pool, bus, store, app_context)
    old = [await t.ingest(), await t.ingest()][0]
    await t.compact()
    t.ctx.maintenance.retention.policy = AGGRESSIVE
    acquire = snapshots.acquire_lease

    async def gc_first(conn: Any, tenant_id: TenantId, snapshot_id: int, owner: str, seconds: float) -> int:
        # The worst interleaving: a whole GC run lands just before the query registers its lease.
        await t.retain()
        return await acquire(conn, tenant_id, snapshot_id, owner, seconds)

    monkeypatch.setattr(snapshots, "acquire_lease", gc_first)
    response = await client.post("/v1/query", headers=t.headers, json={"sql": SQL, "snapshot_id": old})
    assert response.status_code in (200, 404), response.text
    if response.status_code == 200:
        assert response.json()["rows"] == t.answers[old]


async def test_a_query_leasing_while_expiry_is_in_flight_answers_404_or_keeps_its_snapshot(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext, monkeypatch: Any,
) -> None:
    t = await new_tenant(client, make_key, pool, bus, store, app_context)
    old = [await t.ingest(), await t.ingest()][0]
    await t.compact()
    in_scan, release = gate_engine(app_context, monkeypatch)
    # Hold retention's expiry statement open (in production it is in flight for the length of one
    # UPDATE) while the query resolves, leases and re-checks the snapshot.
    async with pool.transaction() as expiry:
        assert await maintenance.expire_snapshots(expiry, t.tenant_id, [old]) == [old]
        reading = asyncio.create_task(client.post("/v1/query", headers=t.headers, json={"sql": SQL, "snapshot_id": old}))
        await asyncio.to_thread(in_scan.wait, 2)  # bounded: a correct query blocks on the expiry instead
    await t.retain(AGGRESSIVE)  # the rest of the run: delete what is no longer reachable
    release.set()
    response = await reading

    assert response.status_code in (200, 404), response.text
    if response.status_code == 200:
        assert response.json()["rows"] == t.answers[old]


async def test_table_retention_never_brings_back_a_deleted_key(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext,
) -> None:
    headers = await make_key()
    kv = await create_table(client, headers, "kv", primary_key=["id"])
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    now = datetime.now(UTC).isoformat()
    for key, op, payload, event_time in [
        ("put", "upsert", {"id": 1, "name": "secret"}, now),
        ("forget", "delete", {"id": 1}, "2020-01-01T00:00:00Z"),  # a delete stamped with an old event time
        ("other", "upsert", {"id": 2, "name": "kept"}, now),
    ]:
        body = {"records": [{"idempotency_key": key, "op": op, "payload": payload, "event_time": event_time}]}
        response = await client.post("/v1/ingest/kv", headers=headers, json=body)
        assert response.status_code in (200, 202), response.text
        await coordinator.run_once()
    sql = {"sql": "SELECT id, name FROM kv ORDER BY id"}
    assert (await client.post("/v1/query", headers=headers, json=sql)).json()["rows"] == [[2, "kept"]]
    async with pool.connection() as conn:
        await conn.execute("UPDATE table_def SET retention_days = 1 WHERE table_id = %s", (kv["table_id"],))

    await app_context.maintenance.retain(TenantId(kv["tenant_id"]))

    assert (await client.post("/v1/query", headers=headers, json=sql)).json()["rows"] == [[2, "kept"]]

"""Row semantics the commit protocol guarantees (issue: one commit protocol and the audit's cases):
latest token wins even across late publications, replays and compaction; a failure resolves a
token in the same commit that moves the watermark; columns are matched by stable field id;
snapshots pin schema versions; strict JSON; honest wait_for_visibility; a bus that shrinks;
strict reads that wait only for the tables they read."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest

from duckmesh.api.context import AppContext
from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog import maintenance, snapshots, tables, tokens
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.notify import Listener
from duckmesh.coordinator import worker
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.domain import TenantId
from duckmesh.maintenance.compaction import CompactionPlan, CompactionPolicy, plan
from duckmesh.maintenance.retention import RetentionPolicy
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import (
    accepted_records,
    create_table,
    head_watermark,
    poison,
    post_query,
    records,
    segment_states,
)
from tests.helpers import query_ok as query

KV = [{"name": "id", "type": "int64", "nullable": False}, {"name": "v", "type": "int64"}]
EAGER = CompactionPolicy(min_input_files=2)


def op(key: str, kind: str, id_: int, v: int | None = None, event_time: str | None = None) -> dict[str, Any]:
    payload = {"id": id_} if v is None else {"id": id_, "v": v}
    record: dict[str, Any] = {"idempotency_key": key, "op": kind, "payload": payload}
    if event_time is not None:
        record["event_time"] = event_time
    return record


async def ingest(client: httpx.AsyncClient, headers: dict[str, str], table: str, body: list[dict[str, Any]]) -> int:
    response = await client.post(f"/v1/ingest/{table}", headers=headers, json={"records": body})
    assert response.status_code == 200, response.text
    return int(response.json()["max_visibility_token"])


async def _delete_after_a_held_older_version(
    client: httpx.AsyncClient, headers: dict[str, str], pool: CatalogPool, bus: PostgresBus,
    store: RetryingObjectStore, event_time: str | None = None,
) -> tuple[Any, int]:
    """Key 1 upserted (token 1, claimed by a coordinator that stalls), then deleted (token 2) and
    key 2 upserted (token 3), both published by another coordinator in two files."""
    await ingest(client, headers, "kv", [op("u1", "upsert", 1, 1, event_time)])
    held = await bus.claim("stalled", 100, 1 << 20, 60)
    assert held is not None and [s.min_token for s in held.segments] == [1]
    fast = Coordinator(pool, bus, store, CoordinatorConfig(owner="fast"))
    await ingest(client, headers, "kv", [op("d1", "delete", 1, event_time=event_time)])
    await fast.run_once()
    last = await ingest(client, headers, "kv", [op("u2", "upsert", 2, 2)])
    await fast.run_once()
    return held, last


async def test_compaction_keeps_a_delete_marker_while_an_older_version_of_its_key_is_unpublished(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext,
) -> None:
    headers = await make_key()
    kv = await create_table(client, headers, "kv", columns=KV, primary_key=["id"])
    held, last = await _delete_after_a_held_older_version(client, headers, pool, bus, store)
    app_context.maintenance.compactor.policy = EAGER

    result = await app_context.maintenance.compact(TenantId(kv["tenant_id"]), "kv")
    assert result["tables"]["kv"]["status"] == "completed" and result["tables"]["kv"]["drop_tombstones"] is False
    await Coordinator(pool, bus, store, CoordinatorConfig(owner="stalled")).process(held)  # the late publication

    body = await query(client, headers, "SELECT id, v FROM kv ORDER BY id", min_visibility_token=last)
    assert body["rows"] == [[2, 2]], "key 1 stays deleted: its delete (token 2) outranks the late upsert (token 1)"


async def test_a_tombstone_dropping_compaction_is_refused_at_commit_while_an_older_version_is_unresolved(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext,
) -> None:
    headers = await make_key()
    kv = await create_table(client, headers, "kv", columns=KV, primary_key=["id"])
    tenant_id = TenantId(kv["tenant_id"])
    held, last = await _delete_after_a_held_older_version(client, headers, pool, bus, store)
    compactor = app_context.maintenance.compactor
    async with pool.connection() as conn:
        table = await tables.get_table(conn, tenant_id, "kv")
        live = await snapshots.current_files(conn, tenant_id, table.table_id)
        assert await maintenance.acquire_job(conn, tenant_id, table.table_id, "compaction", "run-1", 60)
    chosen = plan(table, live, EAGER)  # planned by the file set alone: it covers every live file
    assert isinstance(chosen, CompactionPlan) and chosen.drop_tombstones
    outputs = await compactor.write_outputs(tenant_id, 1, chosen, "run-1")

    assert await compactor.publish(tenant_id, chosen, outputs, "run-1") == "aborted"
    await Coordinator(pool, bus, store, CoordinatorConfig(owner="stalled")).process(held)
    body = await query(client, headers, "SELECT id, v FROM kv ORDER BY id", min_visibility_token=last)
    assert body["rows"] == [[2, 2]]


async def test_table_retention_on_a_keyed_table_never_drops_a_delete_that_hides_an_unpublished_version(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext,
) -> None:
    headers = await make_key()
    kv = await create_table(client, headers, "kv", columns=KV, primary_key=["id"])
    held, last = await _delete_after_a_held_older_version(client, headers, pool, bus, store,
                                                          event_time="2020-01-01T00:00:00Z")
    async with pool.connection() as conn:
        await conn.execute("UPDATE table_def SET retention_days = 30 WHERE table_id = %s", (kv["table_id"],))
    retention = app_context.maintenance.retention
    retention.policy = RetentionPolicy(gc_safety_age=timedelta(0))

    summary = await retention.run(TenantId(kv["tenant_id"]))
    await Coordinator(pool, bus, store, CoordinatorConfig(owner="stalled")).process(held)

    assert summary["files_expired_by_table_retention"] == 0, "the commit refused to drop the delete marker"
    body = await query(client, headers, "SELECT id, v FROM kv ORDER BY id", min_visibility_token=last)
    assert body["rows"] == [[2, 2]]


async def test_a_replayed_dead_letter_never_overtakes_a_newer_version_of_its_key(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext, monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = await make_key()
    kv = await create_table(client, headers, "kv", columns=KV, primary_key=["id"])
    broken = poison(monkeypatch, "v", 1)  # the old version cannot be materialized (yet)
    await ingest(client, headers, "kv", [op("old", "upsert", 1, 1)])
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c", max_attempts=1))
    await coordinator.run_once()
    newer = await ingest(client, headers, "kv", [op("new", "upsert", 1, 2)])
    await coordinator.run_once()
    broken[0] = False  # the operator deploys the fix and replays the dead letter
    [letter] = (await client.get("/v1/dead-letters", headers=headers)).json()["dead_letters"]
    replay = (await client.post("/v1/dead-letters/replay", headers=headers,
                                json={"event_ids": [letter["event_id"]]})).json()
    replay_token = replay["max_visibility_token"]
    assert replay_token > newer
    await coordinator.run_once()
    app_context.maintenance.compactor.policy = EAGER
    await app_context.maintenance.compact(TenantId(kv["tenant_id"]), "kv")

    body = await query(client, headers, "SELECT id, v FROM kv", min_visibility_token=replay_token)
    assert body["rows"] == [[1, 2]], "the replay keeps its original place in the key's history"


async def test_a_crash_before_the_commit_leaves_its_records_unresolved_and_never_strands_the_watermark(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = await make_key()
    table = await create_table(client, headers)
    token = await ingest(client, headers, "events", records(0, 3))
    real_commit = worker.commit

    async def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the coordinator died before its commit")

    monkeypatch.setattr(worker, "commit", crash)
    crashing = Coordinator(pool, bus, store, CoordinatorConfig(owner="doomed", max_attempts=1, lease_seconds=0.2))
    with pytest.raises(RuntimeError):
        await crashing.run_once()
    monkeypatch.setattr(worker, "commit", real_commit)

    assert await segment_states(pool, table["tenant_id"]) == {"claimed": 3}, "failing happens only inside a commit"
    await asyncio.sleep(0.3)
    rescuer = Coordinator(pool, bus, store, CoordinatorConfig(owner="rescuer", max_attempts=1))
    await rescuer.resolve_expired()  # out of attempts: failed in the same commit that moves the watermark
    assert (await head_watermark(pool, table["tenant_id"]))[1] == token
    lag = (await client.get("/v1/lag", headers=headers)).json()
    assert lag["failed_events"] == 3 and lag["latest_visibility_token"] == token


async def test_a_dropped_and_re_added_column_never_shows_the_old_values(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    headers = await make_key()
    columns = [{"name": "id", "type": "int64", "nullable": False}, {"name": "email", "type": "string"}]
    await create_table(client, headers, "people", columns=columns)
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    await ingest(client, headers, "people", [{"idempotency_key": "a", "payload": {"id": 1, "email": "a@x.io"}}])
    await coordinator.run_once()
    for new_columns in (columns[:1], columns):  # drop email (privacy request), later add an email column again
        response = await client.patch("/v1/tables/people", headers=headers,
                                      json={"columns": new_columns, "compatibility_mode": "none"})
        assert response.status_code == 200, response.text
    token = await ingest(client, headers, "people", [{"idempotency_key": "b", "payload": {"id": 2, "email": "b@x.io"}}])
    await coordinator.run_once()

    body = await query(client, headers, "SELECT id, email FROM people ORDER BY id", min_visibility_token=token)
    assert body["rows"] == [[1, None], [2, "b@x.io"]]


async def test_a_snapshot_answers_with_the_same_columns_at_the_head_and_by_id(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    await ingest(client, headers, "events", records(0, 2))
    await Coordinator(pool, bus, store, CoordinatorConfig(owner="c")).run_once()
    before = await query(client, headers, "SELECT * FROM events")
    altered = [*[{"name": c, "type": t} for c, t in (("id", "int64"), ("name", "string"), ("amount", "decimal(12,2)"),
                                                      ("at", "timestamp"))], {"name": "extra", "type": "string"}]
    altered[0]["nullable"] = False
    assert (await client.patch("/v1/tables/events", headers=headers, json={"columns": altered})).status_code == 200

    at_head = await query(client, headers, "SELECT * FROM events")
    by_id = await query(client, headers, "SELECT * FROM events", snapshot_id=at_head["snapshot_id"])
    old_by_id = await query(client, headers, "SELECT * FROM events", snapshot_id=before["snapshot_id"])
    assert at_head["columns"] == by_id["columns"] and [c["name"] for c in at_head["columns"]][-1] == "extra"
    assert old_by_id["columns"] == before["columns"], "the older snapshot keeps its columns"


async def test_a_delete_on_a_keyed_table_with_a_required_column_applies(
    client: httpx.AsyncClient, make_key: KeyMaker, store: RetryingObjectStore, pool: CatalogPool, listener: Listener,
) -> None:
    from tests.helpers import running_coordinators

    headers = await make_key()
    columns = [{"name": "id", "type": "int64", "nullable": False}, {"name": "name", "type": "string", "nullable": False}]
    await create_table(client, headers, "users", columns=columns, primary_key=["id"])
    async with running_coordinators(pool, store, listener, count=1):
        await ingest(client, headers, "users", [{"idempotency_key": "u", "op": "upsert",
                                                 "payload": {"id": 1, "name": "ann"}}])
        response = await client.post("/v1/ingest/users", headers=headers, json={
            "records": [{"idempotency_key": "d", "op": "delete", "payload": {"id": 1}}],
            "wait_for_visibility": True, "visibility_timeout_ms": 10_000})
    assert response.status_code == 200 and response.json()["status"] == "visible", response.text
    assert (await query(client, headers, "SELECT * FROM users"))["rows"] == []
    assert (await client.get("/v1/dead-letters", headers=headers)).json()["dead_letters"] == []


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_non_standard_json_numbers_are_refused_and_nothing_is_stored(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, literal: str,
) -> None:
    headers = await make_key()
    await create_table(client, headers, "m", columns=[{"name": "x", "type": "float64"}, {"name": "j", "type": "json"}])
    body = '{"records": [{"idempotency_key": "k", "payload": {"x": LIT, "j": {"y": LIT}}}]}'.replace("LIT", literal)

    response = await client.post("/v1/ingest/m", headers={**headers, "content-type": "application/json"}, content=body)

    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_JSON", response.text
    assert await accepted_records(pool) == 0


async def test_wait_for_visibility_reports_dead_lettered_records_instead_of_visible(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, store: RetryingObjectStore, listener: Listener,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    poison(monkeypatch, "name", "poison")
    body = records(0, 3)
    body[1]["payload"]["name"] = "poison"
    stop = asyncio.Event()
    coordinator = Coordinator(pool, PostgresBus(pool, listener), store,
                              CoordinatorConfig(owner="c", max_attempts=1, flush_interval=0.05))
    running = asyncio.create_task(coordinator.run(stop))
    try:
        response = await client.post("/v1/ingest/events", headers=headers, json={
            "records": body, "wait_for_visibility": True, "visibility_timeout_ms": 10_000})
    finally:
        stop.set()
        await running
    assert response.status_code == 200, response.text
    receipt = response.json()
    assert receipt["status"] == "dead_lettered" and receipt["failed_count"] == 1 and receipt["accepted_count"] == 3


async def test_retention_deletes_replayed_and_expired_dead_letters_and_finished_claims(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: AppContext, monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = await make_key()
    table = await create_table(client, headers)
    broken = poison(monkeypatch, "name", "n0")
    await ingest(client, headers, "events", records(0, 3))
    await ingest(client, headers, "events", [{"idempotency_key": "p", "payload": {"id": 9, "name": "n0"}}])
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c", max_attempts=1))
    await coordinator.run_once()
    letters = (await client.get("/v1/dead-letters", headers=headers)).json()["dead_letters"]
    assert len(letters) == 2
    broken[0] = False
    await client.post("/v1/dead-letters/replay", headers=headers, json={"event_ids": [letters[0]["event_id"]]})
    await coordinator.run_once()
    async with pool.connection() as conn:  # time passes: everything is older than the windows
        await conn.execute("UPDATE ingest_segment SET resolved_at = now() - interval '40 days'")
        await conn.execute("UPDATE ingest_dead_letter SET failed_at = now() - interval '40 days',"
                           " replayed_at = replayed_at - interval '40 days'")
        await conn.execute("UPDATE snapshot SET created_at = created_at - interval '40 days'")
        await conn.execute("UPDATE ingest_claim_batch SET claimed_at = now() - interval '1 hour'")
    app_context.maintenance.retention.policy = RetentionPolicy(idempotency_window=timedelta(days=7),
                                                               dead_letter_retention=timedelta(days=30))

    summary = await app_context.maintenance.retention.run(TenantId(table["tenant_id"]))

    assert summary["bus_cleanup"] == {
        "committed_events": 5, "replayed_dead_letters": 1, "expired_dead_letters": 1, "finished_claims": 2,
        "resolved_reservations": 0, "idempotency_keys": 4, "request_keys": 0, "segments": 3}
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT (SELECT count(*) FROM ingest_segment) AS segments,"
                                 " (SELECT count(*) FROM ingest_key) AS keys,"
                                 " (SELECT count(*) FROM ingest_dead_letter) AS dead,"
                                 " (SELECT count(*) FROM ingest_claim_batch) AS claims")
        assert await cur.fetchone() == {"segments": 0, "keys": 0, "dead": 0, "claims": 0}


async def test_a_pending_backfill_on_one_table_does_not_stall_strict_reads_of_another(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    headers = await make_key()
    slow = await create_table(client, headers, "slow")
    await create_table(client, headers, "fast")
    await tokens.reserve_tokens(pool, TenantId(slow["tenant_id"]), slow["table_id"], "big-load", b"h", 100, 600)
    token = await ingest(client, headers, "fast", records(0, 5))
    await Coordinator(pool, bus, store, CoordinatorConfig(owner="c")).run_once()

    fast = await query(client, headers, "SELECT count(*) FROM fast", min_visibility_token=token,
                       consistency_timeout_ms=2000)
    assert fast["rows"] == [[5]] and fast["max_visibility_token"] == 0, "the tenant watermark is held, not this table"
    blocked = await post_query(client, headers, "SELECT count(*) FROM slow", min_visibility_token=token,
                               consistency_timeout_ms=200)
    assert blocked.status_code == 504 and blocked.json()["error_code"] == "CONSISTENCY_TIMEOUT"

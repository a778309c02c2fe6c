"""Compaction never changes what a snapshot answers (MAINTENANCE.md "Compaction").

Random workloads over an append-only and a keyed table are published in small snapshots with
compactions (full, per table, or byte-limited) in between. Every snapshot's answers to a few
queries are recorded when it appears; a compaction snapshot must answer exactly like its
parent and carry its parent's watermarks; at the end every snapshot still answers as it did,
and the head equals a dictionary model of the workload.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import duckdb
import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from duckmesh.api.context import AppContext
from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog import snapshots, tables
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.domain import SnapshotKind, TableId, TenantId
from duckmesh.maintenance.compaction import CompactionPolicy
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table, snapshot_rows

COLUMNS: list[dict[str, Any]] = [{"name": "id", "type": "int64", "nullable": False}, {"name": "v", "type": "int64"}]
DAYS = ("2024-05-01T10:00:00Z", "2024-05-02T10:00:00Z")
QUERIES = {
    "ev_rows": "SELECT id, v FROM ev ORDER BY id, v",
    "kv_rows": "SELECT id, v FROM kv ORDER BY id",
    "aggregates": (
        "SELECT (SELECT count(*) FROM ev), (SELECT CAST(coalesce(sum(v), 0) AS BIGINT) FROM ev),"
        " (SELECT count(DISTINCT id) FROM ev), (SELECT count(*) FROM kv),"
        " (SELECT CAST(coalesce(sum(v), 0) AS BIGINT) FROM kv), (SELECT min(id) FROM kv),"
        " (SELECT max(id) FROM kv), (SELECT count(*) FROM kv JOIN ev ON kv.id = ev.id)"
    ),
}

Op = tuple[str, str, int, int, str]  # (table, op, id, v, event_time)

_ev_ops = st.tuples(st.just("ev"), st.just("insert"), st.integers(0, 9), st.integers(-5, 5), st.sampled_from(DAYS))
_kv_ops = st.tuples(st.just("kv"), st.sampled_from(["insert", "upsert", "upsert", "delete"]), st.integers(0, 7),
                    st.integers(-5, 5), st.sampled_from(DAYS))
_batch = st.lists(st.one_of(_ev_ops, _kv_ops), min_size=1, max_size=8)
# Every workload starts with two batches that touch both tables on the first day, so the
# closing full compaction always has something to merge.
_seed = st.tuples(
    st.tuples(st.just("ev"), st.just("insert"), st.integers(0, 9), st.integers(-5, 5), st.just(DAYS[0])),
    st.tuples(st.just("kv"), st.just("upsert"), st.integers(0, 7), st.integers(-5, 5), st.just(DAYS[0])),
).map(list)
_compact = st.tuples(st.just("compact"), st.sampled_from([("ev",), ("kv",), ("ev", "kv")]),
                     st.sampled_from([None, 2, 3]))
_step = st.one_of(_batch.map(lambda ops: ("ingest", ops)), _compact)
WORKLOADS = st.tuples(
    st.lists(st.tuples(_seed, _batch).map(lambda p: ("ingest", p[0] + p[1])), min_size=2, max_size=2),
    st.lists(_step, min_size=1, max_size=5),
).map(lambda p: [*p[0], *p[1], ("compact", ("ev", "kv"), None)])


@dataclass
class Model:
    events: list[tuple[int, int]] = field(default_factory=list)
    keyed: dict[int, int] = field(default_factory=dict)

    def apply(self, ops: list[Op]) -> None:
        for table, op, id_, v, _ in ops:
            if table == "ev":
                self.events.append((id_, v))
            elif op == "delete":
                self.keyed.pop(id_, None)
            else:
                self.keyed[id_] = v

    def answers(self) -> dict[str, list[list[Any]]]:
        """The QUERIES evaluated over the model (by DuckDB over plain Python rows)."""
        con = duckdb.connect()
        con.execute("CREATE TABLE ev (id BIGINT, v BIGINT)")
        con.execute("CREATE TABLE kv (id BIGINT, v BIGINT)")
        if self.events:
            con.executemany("INSERT INTO ev VALUES (?, ?)", self.events)
        if self.keyed:
            con.executemany("INSERT INTO kv VALUES (?, ?)", sorted(self.keyed.items()))
        return {name: [list(row) for row in con.execute(sql).fetchall()] for name, sql in QUERIES.items()}


@dataclass
class Harness:
    client: httpx.AsyncClient
    headers: dict[str, str]
    pool: CatalogPool
    tenant_id: TenantId
    table_ids: dict[str, TableId]
    recorded: dict[int, dict[str, list[list[Any]]]] = field(default_factory=dict)

    async def answers(self, snapshot_id: int) -> dict[str, list[list[Any]]]:
        out = {}
        for name, sql in QUERIES.items():
            response = await self.client.post("/v1/query", headers=self.headers,
                                              json={"sql": sql, "snapshot_id": snapshot_id})
            assert response.status_code == 200, response.text
            assert response.json()["snapshot_id"] == snapshot_id
            out[name] = response.json()["rows"]
        return out

    async def new_snapshots(self) -> list[snapshots.Snapshot]:
        async with self.pool.connection() as conn:
            found = await snapshots.list_snapshots(conn, self.tenant_id, limit=1000)
        return sorted((s for s in found if s.snapshot_id not in self.recorded), key=lambda s: s.snapshot_id)

    async def record_new(self) -> None:
        """Record the answers of every snapshot that appeared; a compaction snapshot must answer
        like its parent and keep its parent's watermarks."""
        for snap in await self.new_snapshots():
            if snap.kind is SnapshotKind.SCHEMA:
                continue  # the tables' creation: before the workload, not every table exists yet
            self.recorded[snap.snapshot_id] = await self.answers(snap.snapshot_id)
            if snap.kind is SnapshotKind.COMPACTION:
                await self.check_compaction(snap)

    async def check_compaction(self, snap: snapshots.Snapshot) -> None:
        parent = snap.parent_snapshot_id
        assert parent is not None and parent in self.recorded
        assert_same_multisets(self.recorded[snap.snapshot_id], self.recorded[parent])
        async with self.pool.connection() as conn:
            before = await snapshots.get_snapshot(conn, self.tenant_id, parent)
            assert snap.max_visibility_token == before.max_visibility_token
            assert await snapshots.table_watermarks(conn, snap.snapshot_id) == \
                await snapshots.table_watermarks(conn, parent)


def assert_same_multisets(got: dict[str, list[list[Any]]], expected: dict[str, list[list[Any]]]) -> None:
    assert got.keys() == expected.keys()
    for name in got:
        assert Counter(map(tuple, got[name])) == Counter(map(tuple, expected[name])), name
    assert got == expected, "ORDER BY queries also keep their order"


def payload(op: Op) -> dict[str, Any]:
    table, kind, id_, v, _ = op
    return {"id": id_} if table == "kv" and kind == "delete" else {"id": id_, "v": v}


async def ingest(h: Harness, coordinator: Coordinator, ops: list[Op], step: int) -> None:
    for table in ("ev", "kv"):
        mine = [(j, op) for j, op in enumerate(ops) if op[0] == table]
        if not mine:
            continue
        body = {"records": [{"idempotency_key": f"{step}-{j}", "op": op[1], "payload": payload(op),
                             "event_time": op[4]} for j, op in mine]}
        response = await h.client.post(f"/v1/ingest/{table}", headers=h.headers, json=body)
        assert response.status_code in (200, 202), response.text
    await coordinator.run_once()  # one snapshot for the whole batch


async def compact(h: Harness, ctx: AppContext, names: tuple[str, ...], max_files: int | None) -> None:
    compactor = ctx.maintenance.compactor
    for name in names:
        limit = 1 << 40
        if max_files is not None:
            # A byte budget that admits about ``max_files`` of the oldest files: a partial compaction.
            async with h.pool.connection() as conn:
                live = await snapshots.current_files(conn, h.tenant_id, h.table_ids[name])
            limit = sum(f.file_size_bytes for f in live[:max_files]) or 1
        compactor.policy = CompactionPolicy(min_input_files=2, max_input_bytes=limit)
        async with h.pool.connection() as conn:
            table = await tables.get_table(conn, h.tenant_id, name)
        result = await compactor.compact_table(h.tenant_id, table)
        assert result["status"] in ("completed", "nothing_to_do"), result
        if result["status"] == "completed":
            event(f"{name}: {'full' if result['drop_tombstones'] else 'partial'} compaction")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(workload=WORKLOADS)
async def test_every_snapshot_answers_the_same_before_and_after_compaction(
    workload: list[tuple[Any, ...]], client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool,
    bus: PostgresBus, store: RetryingObjectStore, app_context: AppContext,
) -> None:
    headers = await make_key(f"prop-{uuid.uuid4().hex[:10]}")  # a fresh tenant per example
    ev = await create_table(client, headers, "ev", columns=COLUMNS)
    kv = await create_table(client, headers, "kv", columns=COLUMNS, primary_key=["id"])
    h = Harness(client, headers, pool, TenantId(ev["tenant_id"]),
                {"ev": TableId(ev["table_id"]), "kv": TableId(kv["table_id"])})
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="prop"))
    model = Model()

    for step, (kind, *args) in enumerate(workload):
        if kind == "ingest":
            await ingest(h, coordinator, args[0], step)
            model.apply(args[0])
        else:
            await compact(h, app_context, args[0], args[1])
        await h.record_new()

    kinds = Counter(s.kind for s in await _all_snapshots(h))
    assert kinds[SnapshotKind.COMPACTION] >= 1, "the closing full compaction had inputs"
    for snapshot_id, expected in h.recorded.items():  # time travel still answers the same
        assert_same_multisets(await h.answers(snapshot_id), expected)
    head = max(h.recorded)
    assert h.recorded[head] == model.answers()


async def _all_snapshots(h: Harness) -> list[snapshots.Snapshot]:
    async with h.pool.connection() as conn:
        return await snapshots.list_snapshots(conn, h.tenant_id, limit=1000)


async def _ingest_kv(client: httpx.AsyncClient, headers: dict[str, str], coordinator: Coordinator, key: str,
                     rows: list[dict[str, Any]], day: str, op: str = "upsert") -> None:
    body = {"records": [{"idempotency_key": f"{key}-{i}", "op": op, "payload": row, "event_time": day}
                        for i, row in enumerate(rows)]}
    response = await client.post("/v1/ingest/kv", headers=headers, json=body)
    assert response.status_code in (200, 202), response.text
    await coordinator.run_once()


async def _kv(client: httpx.AsyncClient, headers: dict[str, str], **extra: Any) -> list[list[Any]]:
    response = await client.post("/v1/query", headers=headers,
                                 json={"sql": "SELECT id, v FROM kv WHERE id < 1000 ORDER BY id", **extra})
    assert response.status_code == 200, response.text
    return list(response.json()["rows"])


@pytest.mark.parametrize("older_file_left_out_by", ["other_partition", "large_file"])
async def test_a_tombstone_in_a_partial_compaction_keeps_hiding_an_older_version_outside_it(
    older_file_left_out_by: str, client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool,
    bus: PostgresBus, store: RetryingObjectStore, app_context: AppContext,
) -> None:
    headers = await make_key()
    kv = await create_table(client, headers, "kv", columns=COLUMNS, primary_key=["id"])
    tenant_id, table_id = TenantId(kv["tenant_id"]), TableId(kv["table_id"])
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    older_day, newer_day = (DAYS[0], DAYS[1]) if older_file_left_out_by == "other_partition" else (DAYS[0], DAYS[0])
    # The older version of key 1 (plus, for "large_file", enough filler to make its file big).
    filler = [{"id": 1000 + i, "v": i} for i in range(3000)] if older_file_left_out_by == "large_file" else []
    await _ingest_kv(client, headers, coordinator, "old", [{"id": 1, "v": 10}, *filler], older_day)
    first = await _head(pool, tenant_id)
    await _ingest_kv(client, headers, coordinator, "del", [{"id": 1}], newer_day, op="delete")
    await _ingest_kv(client, headers, coordinator, "new", [{"id": 2, "v": 20}], newer_day)
    before = await _kv(client, headers)
    assert before == [[2, 20]]
    async with pool.connection() as conn:
        live = await snapshots.current_files(conn, tenant_id, table_id)
    older, *newer = live
    policy = CompactionPolicy(min_input_files=2)
    if older_file_left_out_by == "large_file":
        small, big = max(f.file_size_bytes for f in newer), older.file_size_bytes
        assert small + 1 < big
        policy = CompactionPolicy(min_input_files=2, target_file_bytes=small + big)  # small < target/2 <= big
    app_context.maintenance.compactor.policy = policy

    result = (await app_context.maintenance.compact(tenant_id, "kv"))["tables"]["kv"]

    assert result["status"] == "completed" and result["input_files"] == 2, result
    assert result["drop_tombstones"] is False, "the older file is not an input: tombstones must stay"
    async with pool.connection() as conn:
        after_files = await snapshots.current_files(conn, tenant_id, table_id)
    assert older.file_id in {f.file_id for f in after_files} and len(after_files) == 2
    rows = await snapshot_rows(pool, store, tenant_id, table_id)
    assert [(r["id"], r["_dm_op"]) for r in rows if r["id"] == 1] == [(1, "upsert"), (1, "delete")]
    assert await _kv(client, headers) == before, "key 1 stays deleted"
    assert await _kv(client, headers, snapshot_id=first) == [[1, 10]], "time travel still sees the old version"

    if older_file_left_out_by == "large_file":
        # Once a compaction covers every file of the table, the tombstone and what it hid go away.
        app_context.maintenance.compactor.policy = CompactionPolicy(min_input_files=2)
        full = (await app_context.maintenance.compact(tenant_id, "kv"))["tables"]["kv"]
        assert full["status"] == "completed" and full["drop_tombstones"] is True, full
        rows = await snapshot_rows(pool, store, tenant_id, table_id)
        assert [r for r in rows if r["id"] == 1 or r["_dm_op"] == "delete"] == []
        assert await _kv(client, headers) == before


async def _head(pool: CatalogPool, tenant_id: TenantId) -> int:
    async with pool.connection() as conn:
        head = await snapshots.head(conn, tenant_id)
    assert head.snapshot_id is not None
    return head.snapshot_id

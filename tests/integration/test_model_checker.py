"""A model-based checker: seeded random schedules of ingest (upsert/delete/insert, poison records),
coordinator batches (with crashes before the commit, stalled claims published late), lease
recovery, compaction (with crashes after the merge), retention, restore, drop and re-create, and
dead-letter replay — every snapshot compared with a pure model.

The model is built from what the catalog says each snapshot did (which events it committed,
which snapshot it restored, which table it dropped) and from what the test itself sent (every
token's table, op and payload). It checks, for every snapshot:
- what queries answer by snapshot id equals the model: per key the highest version wins and a
  winning delete hides the key (versions are tokens; a replay keeps its original token);
- compaction and retention change no answer; a compaction snapshot answers like its parent;
- an event committed in a snapshot always has a token above its parent's watermark (the
  watermark never covered an unpublished token);
and, at the end, that no acknowledged event is lost: each is committed, or failed and replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest

from duckmesh.api.context import AppContext
from duckmesh.bus.base import Claim
from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog import maintenance, snapshots, tables
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator import materialize, worker
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.domain import SnapshotKind, TenantId
from duckmesh.maintenance.compaction import CompactionPlan, CompactionPolicy, plan
from duckmesh.maintenance.retention import RetentionPolicy
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table

KV = [{"name": "id", "type": "int64", "nullable": False}, {"name": "v", "type": "int64"}]
EV = [{"name": "id", "type": "int64", "nullable": False}, {"name": "tag", "type": "string"}]
KEYS = 5
STEPS = 90


@dataclass(frozen=True)
class Version:
    table: str
    token: int  # the version's order: its token (a replay keeps its original one)
    op: str
    payload: dict[str, Any]


# A snapshot's expected content: table id -> versions live in it (token -> version).
State = dict[int, dict[int, Version]]


def visible(state: State, table_id: int, keyed: bool) -> list[list[Any]]:
    versions = sorted(state.get(table_id, {}).values(), key=lambda v: v.token)
    if not keyed:
        return sorted([v.payload["id"], v.payload["tag"]] for v in versions)
    latest: dict[int, Version] = {}
    for version in versions:
        latest[version.payload["id"]] = version
    return sorted([k, v.payload["v"]] for k, v in latest.items() if v.op != "delete")


@dataclass
class Checker:
    client: httpx.AsyncClient
    headers: dict[str, str]
    pool: CatalogPool
    bus: PostgresBus
    store: RetryingObjectStore
    ctx: AppContext
    tenant_id: TenantId
    rng: random.Random
    tables: dict[str, int] = field(default_factory=dict)  # live name -> table id
    names: dict[int, str] = field(default_factory=dict)  # every table id -> name
    sent: dict[int, Version] = field(default_factory=dict)  # token -> what the test sent
    table_of: dict[int, int] = field(default_factory=dict)  # token -> table id
    poisoned: set[int] = field(default_factory=set)  # tokens the coordinator cannot materialize
    states: dict[int, State] = field(default_factory=dict)  # snapshot id -> expected state
    marks: dict[int, int] = field(default_factory=dict)  # snapshot id -> watermark
    restored: dict[int, int] = field(default_factory=dict)  # restore snapshot -> its target
    stalled: list[Claim] = field(default_factory=list)
    build: Any = None
    seq: int = 0
    seen: int = 0

    def refuse_poison(self, records: Any, schema: Any) -> Any:
        """The coordinator's materialization, with a bug that hits the poisoned tokens."""
        if self.poisoned & set(records.column("__token").to_pylist()):
            raise ValueError("cannot materialize a poisoned record")
        return self.build(records, schema)

    @property
    def coordinator(self) -> Coordinator:
        return Coordinator(self.pool, self.bus, self.store,
                           CoordinatorConfig(owner="c", max_attempts=1, lease_seconds=0.3))

    # --- steps -------------------------------------------------------------------------------

    async def ingest(self) -> None:
        table = self.rng.choice(["kv", "ev"])
        body = []
        for _ in range(self.rng.randint(1, 6)):
            self.seq += 1
            if table == "kv":
                kind = self.rng.choice(["upsert", "upsert", "delete"])
                key = self.rng.randrange(KEYS)
                payload: dict[str, Any] = {"id": key} if kind == "delete" else {"id": key, "v": self.seq}
            else:
                kind, payload = "insert", {"id": self.seq, "tag": f"t{self.seq}"}
            body.append({"idempotency_key": f"k{self.seq}", "op": kind, "payload": payload})
        # One key once per request, so tokens alone order the versions.
        seen: set[int] = set()
        body = [r for r in body if not (r["payload"]["id"] in seen or seen.add(r["payload"]["id"]))]
        response = await self.client.post(f"/v1/ingest/{table}", headers=self.headers, json={"records": body})
        assert response.status_code == 200, response.text
        last = response.json()["max_visibility_token"]
        for offset, record in enumerate(body):
            token = last - len(body) + 1 + offset
            self.sent[token] = Version(table, token, record["op"], record["payload"])
            self.table_of[token] = self.tables[table]
        if table == "kv" and self.rng.random() < 0.15:  # a poison record: dead-lettered, replayed later
            self.poisoned.add(self.rng.randint(last - len(body) + 1, last))

    async def coordinate(self) -> None:
        if self.rng.random() < 0.2:  # crash between the files and the commit
            real = worker.commit

            async def crash(*args: Any, **kwargs: Any) -> Any:
                raise RuntimeError("crashed before the commit")

            worker.commit = crash  # type: ignore[assignment]
            try:
                with contextlib.suppress(RuntimeError):  # nothing to claim: nothing crashes
                    await self.coordinator.run_once()
            finally:
                worker.commit = real
        else:
            await self.coordinator.run_once()

    async def stall(self) -> None:
        if len(self.stalled) < 2:
            claim = await self.bus.claim(f"stalled-{self.seq}", 50, 1 << 20, 60)
            if claim is not None:
                self.stalled.append(claim)

    async def publish_late(self) -> None:
        if self.stalled:
            claim = self.stalled.pop(0)
            await Coordinator(self.pool, self.bus, self.store, CoordinatorConfig(owner=claim.owner)).process(claim)

    async def recover(self) -> None:
        await asyncio.sleep(0.35)  # past the lease of a crashed batch
        await self.coordinator.resolve_expired()

    async def compact(self) -> None:
        compactor = self.ctx.maintenance.compactor
        compactor.policy = CompactionPolicy(min_input_files=2)
        if self.rng.random() < 0.2:  # crash after the merge: outputs left behind, intents expire
            async with self.pool.connection() as conn:
                table = await tables.get_table(conn, self.tenant_id, "kv")
                live = await snapshots.current_files(conn, self.tenant_id, table.table_id)
                chosen = plan(table, live, compactor.policy)
                if not isinstance(chosen, CompactionPlan) or not await maintenance.acquire_job(
                        conn, self.tenant_id, table.table_id, "compaction", "crashed", 0.01):
                    return
            await compactor.write_outputs(self.tenant_id, 0, chosen, "crashed")
            async with self.pool.connection() as conn:
                await conn.execute("UPDATE write_intent SET expires_at = clock_timestamp() WHERE owner = 'crashed'")
            return
        await compactor.run(self.tenant_id)

    async def retain(self) -> None:
        self.ctx.maintenance.retention.policy = RetentionPolicy(
            keep_snapshots=self.rng.randint(1, 4), snapshot_min_age=timedelta(0), gc_safety_age=timedelta(0))
        result = await self.ctx.maintenance.retain(self.tenant_id)
        assert result["failures"] == [], result

    async def restore(self) -> None:
        async with self.pool.connection() as conn:
            candidates = [s.snapshot_id for s in await snapshots.list_snapshots(conn, self.tenant_id, 50)]
        if candidates:
            target = self.rng.choice(candidates)
            response = await self.client.post("/v1/snapshots/restore", headers=self.headers,
                                              json={"snapshot_id": target})
            assert response.status_code in (201, 404), response.text  # 404: retention got it first
            if response.status_code == 201:
                self.restored[response.json()["snapshot_id"]] = target

    async def replay(self) -> None:
        letters = (await self.client.get("/v1/dead-letters", headers=self.headers)).json()["dead_letters"]
        if not letters:
            return  # (a replayed record has a new token: the bug that hit the original no longer does)
        response = await self.client.post("/v1/dead-letters/replay", headers=self.headers,
                                          json={"event_ids": [d["event_id"] for d in letters]})
        assert response.status_code == 200, response.text

    async def drop_and_recreate(self) -> None:
        assert (await self.client.delete("/v1/tables/ev", headers=self.headers)).status_code == 200
        created = await create_table(self.client, self.headers, "ev", columns=EV)
        self.tables["ev"] = created["table_id"]
        self.names[created["table_id"]] = "ev"

    # --- the model ---------------------------------------------------------------------------

    async def sync(self) -> None:
        """Derive the expected state of every new snapshot and check its answers."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT snapshot_id, parent_snapshot_id, kind, max_visibility_token FROM snapshot"
                " WHERE tenant_id = %s AND snapshot_id > %s ORDER BY snapshot_id", (self.tenant_id, self.seen))
            new = list(await cur.fetchall())
            for snap in new:
                self.states[snap["snapshot_id"]] = await self._expected(conn, snap)
                self.marks[snap["snapshot_id"]] = snap["max_visibility_token"]
        for snap in new:
            self.seen = snap["snapshot_id"]
            await self.check(snap["snapshot_id"])

    async def _expected(self, conn: Any, snap: dict[str, Any]) -> State:
        parent: State = self.states.get(snap["parent_snapshot_id"], {})
        kind = SnapshotKind(snap["kind"])
        live = {t.table.table_id for t in await tables.tables_of_snapshot(conn, self.tenant_id, snap["snapshot_id"])}
        if kind is SnapshotKind.RESTORE:
            target = self.states[self.restored[snap["snapshot_id"]]]
            return {t: dict(target.get(t, {})) for t in live}
        state = {t: dict(parent.get(t, {})) for t in live}
        if kind in (SnapshotKind.INGEST, SnapshotKind.BACKFILL):
            parent_mark = self.marks.get(snap["parent_snapshot_id"], 0)
            for token, version_token in await self._published(conn, snap["snapshot_id"]):
                assert token > parent_mark, (
                    f"snapshot {snap['snapshot_id']} publishes token {token} that its parent's"
                    f" watermark {parent_mark} already covered")
                version = self.sent[version_token]
                state[self.table_of[version_token]][version.token] = version
        return state

    async def _published(self, conn: Any, snapshot_id: int) -> list[tuple[int, int]]:
        """(token, version) of every record a snapshot made visible: its committed segments' tokens
        minus the records it dead-lettered; a replayed record's version is its original token."""
        cur = await conn.execute(
            "SELECT t AS token, coalesce(r.version_token, t) AS version"
            " FROM ingest_segment g CROSS JOIN LATERAL generate_series(g.min_token, g.max_token) AS t"
            " LEFT JOIN ingest_dead_letter r ON r.tenant_id = g.tenant_id AND r.replay_token = t"
            " WHERE g.tenant_id = %(t)s AND g.snapshot_id = %(s)s AND g.state = 'committed'"
            "   AND NOT EXISTS (SELECT 1 FROM ingest_dead_letter d WHERE d.segment_id = g.segment_id"
            "                   AND d.visibility_token = t)",
            {"t": self.tenant_id, "s": snapshot_id})
        return [(r["token"], r["version"]) for r in await cur.fetchall()]

    async def check(self, snapshot_id: int) -> None:
        expected = self.states[snapshot_id]
        for table_id, versions in expected.items():
            del versions
            name = self.names[table_id]
            keyed = name == "kv"
            sql = f"SELECT {'id, v' if keyed else 'id, tag'} FROM {name} ORDER BY 1, 2"
            response = await self.client.post("/v1/query", headers=self.headers, json={
                "sql": sql, "snapshot_id": snapshot_id, "row_limit": 100_000})
            if response.status_code == 404:
                continue  # expired by retention since: nothing left to compare
            assert response.status_code == 200, response.text
            assert response.json()["rows"] == visible(expected, table_id, keyed), (
                f"snapshot {snapshot_id} table {name} differs from the model")

    async def check_retained(self) -> None:
        async with self.pool.connection() as conn:
            retained = [s.snapshot_id for s in await snapshots.list_snapshots(conn, self.tenant_id, 1000)]
        for snapshot_id in retained:
            await self.check(snapshot_id)

    async def drain(self) -> None:
        """Everything stalled published, every dead letter fixed and replayed, every batch done."""
        while self.stalled:
            await self.publish_late()
        for _ in range(6):
            await self.replay()
            await self.recover()
            while (await self.coordinator.run_once())[0]:
                pass
        await self.sync()
        async with self.pool.connection() as conn:
            # Every record the test sent: published, or dead-lettered and replayed, or its table dropped.
            cur = await conn.execute(
                "SELECT t AS token, g.state, d.replay_token, d.dead_letter_id, tb.dropped_at IS NOT NULL AS dropped"
                " FROM ingest_segment g CROSS JOIN LATERAL generate_series(g.min_token, g.max_token) AS t"
                " JOIN table_def tb ON tb.table_id = g.table_id"
                " LEFT JOIN ingest_dead_letter d ON d.segment_id = g.segment_id AND d.visibility_token = t"
                " WHERE g.tenant_id = %s AND g.min_version = g.min_token", (self.tenant_id,))
            seen = {}
            for row in await cur.fetchall():
                seen[row["token"]] = row
                if row["dead_letter_id"] is None:
                    resolved = row["dropped"] or row["state"] == "committed"
                else:
                    resolved = row["dropped"] or row["replay_token"] is not None
                assert resolved, row
            assert set(self.sent) <= set(seen), "every acknowledged record reached the bus"
            cur = await conn.execute(
                "SELECT count(*) AS n FROM ingest_segment WHERE tenant_id = %s AND state IN ('accepted', 'claimed')",
                (self.tenant_id,))
            assert (await cur.fetchone() or {})["n"] == 0, "no record left unresolved"


WEIGHTED = [("ingest", 5), ("coordinate", 3), ("stall", 2), ("publish_late", 2), ("recover", 1), ("compact", 3),
            ("retain", 1), ("restore", 0.7), ("replay", 1), ("drop_and_recreate", 0.3)]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_random_schedules_match_the_model_at_every_snapshot(
    seed: int, client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus,
    store: RetryingObjectStore, app_context: AppContext, monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = await make_key(f"model{seed}")
    kv = await create_table(client, headers, "kv", columns=KV, primary_key=["id"])
    ev = await create_table(client, headers, "ev", columns=EV)
    checker = Checker(client, headers, pool, bus, store, app_context, TenantId(kv["tenant_id"]), random.Random(seed))
    checker.tables = {"kv": kv["table_id"], "ev": ev["table_id"]}
    checker.build = materialize.build_table
    monkeypatch.setattr(materialize, "build_table", checker.refuse_poison)
    checker.names = {kv["table_id"]: "kv", ev["table_id"]: "ev"}
    await checker.sync()
    steps = [name for name, _ in WEIGHTED]
    weights = [w for _, w in WEIGHTED]
    for _ in range(STEPS):
        step = checker.rng.choices(steps, weights)[0]
        await getattr(checker, step)()
        await checker.sync()
        if step in ("compact", "retain"):
            await checker.check_retained()
    await checker.drain()
    await checker.check_retained()
    integrity = await client.post("/v1/integrity/run", headers=headers, json={"deep": True})
    assert integrity.status_code == 200, integrity.text

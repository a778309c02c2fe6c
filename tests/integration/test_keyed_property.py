"""Property: a keyed table, fed random insert/upsert/delete requests over HTTP (with retried
requests that must be duplicates) and published at random points, reads at EVERY snapshot exactly
like a dictionary model that applies the accepted operations in token order."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog import tenants
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table, head_watermark

KEYS = st.integers(min_value=0, max_value=7)
VALUES = st.text(st.characters(codec="utf-8"), max_size=8)
OPS = st.tuples(st.sampled_from(["insert", "upsert", "delete"]), KEYS, VALUES)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.lists(OPS, min_size=1, max_size=6)),
        st.tuples(st.just("retry"), st.integers(min_value=0, max_value=10_000)),
        # one record of an earlier request resent together with new ones: a partial duplicate
        st.tuples(st.just("mixed"), st.integers(min_value=0, max_value=10_000), st.lists(OPS, min_size=1, max_size=3)),
        st.tuples(st.just("publish")),
    ),
    min_size=1, max_size=14,
)
COLUMNS = [{"name": "id", "type": "int64", "nullable": False}, {"name": "v", "type": "string"}]

_tables = itertools.count()


class Scenario:
    """One hypothesis example: a fresh keyed table, the requests sent so far, the model."""

    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str], coordinator: Coordinator,
                 pool: CatalogPool, tenant_id: int) -> None:
        self.client, self.headers, self.coordinator = client, headers, coordinator
        self.pool, self.tenant_id = pool, tenant_id
        self.table = f"kv_{next(_tables)}"
        self.keys = itertools.count()
        self.model: dict[int, str] = {}
        self.sent: list[tuple[list[dict[str, Any]], int]] = []  # (records, max token answered)
        self.history: list[tuple[int, dict[int, str]]] = []  # (snapshot id, model at that snapshot)
        self.max_token = 0
        self.before_table: int | None = None  # snapshots up to this id predate the table

    def new_records(self, ops: list[tuple[str, int, str]]) -> list[dict[str, Any]]:
        made = []
        for op, key, value in ops:
            payload: dict[str, Any] = {"id": key} if op == "delete" else {"id": key, "v": value}
            made.append({"idempotency_key": f"{self.table}-{next(self.keys)}", "op": op, "payload": payload})
        return made

    def apply(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            if record["op"] == "delete":
                self.model.pop(record["payload"]["id"], None)
            else:
                self.model[record["payload"]["id"]] = record["payload"]["v"]

    async def ingest(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        response = await self.client.post(f"/v1/ingest/{self.table}", headers=self.headers, json={"records": records})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        self.max_token = max(self.max_token, body["max_visibility_token"])
        return body

    async def write(self, ops: list[tuple[str, int, str]]) -> None:
        records = self.new_records(ops)
        receipt = await self.ingest(records)
        assert receipt["accepted_count"] == len(records) and receipt["duplicate_count"] == 0
        self.sent.append((records, receipt["max_visibility_token"]))
        self.apply(records)

    async def retry(self, index: int) -> None:
        if not self.sent:
            return
        records, token = self.sent[index % len(self.sent)]
        receipt = await self.ingest(records)
        assert receipt["accepted_count"] == 0 and receipt["duplicate_count"] == len(records)
        assert receipt["max_visibility_token"] == token  # the original events' token

    async def mixed(self, index: int, ops: list[tuple[str, int, str]]) -> None:
        if not self.sent:
            return
        old = self.sent[index % len(self.sent)][0][-1]
        records = self.new_records(ops)
        receipt = await self.ingest([old, *records])
        assert receipt["accepted_count"] == len(records) and receipt["duplicate_count"] == 1
        assert receipt["status"] == "partial_duplicate"
        self.sent.append((records, receipt["max_visibility_token"]))
        self.apply(records)

    async def publish(self) -> None:
        await self.coordinator.run_once()
        snapshot_id, watermark = await head_watermark(self.pool, self.tenant_id)
        assert watermark >= self.max_token
        if snapshot_id is not None and snapshot_id > (self.before_table or 0):
            assert not self.history or snapshot_id >= self.history[-1][0]
            self.history.append((snapshot_id, dict(self.model)))

    async def read(self, snapshot_id: int | None) -> list[list[Any]]:
        extra = {} if snapshot_id is None else {"snapshot_id": snapshot_id}
        response = await self.client.post("/v1/query", headers=self.headers, json={
            "sql": f"SELECT id, v FROM {self.table} ORDER BY id", **extra})
        assert response.status_code == 200, response.text
        rows: list[list[Any]] = response.json()["rows"]
        return rows


@pytest.fixture
async def scenario_parts(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> tuple[httpx.AsyncClient, dict[str, str], Coordinator, CatalogPool, int]:
    headers = await make_key("acme")
    async with pool.connection() as conn:
        tenant_id = (await tenants.ensure_tenant(conn, "acme")).tenant_id
    return client, headers, Coordinator(pool, bus, store, CoordinatorConfig(owner="c")), pool, tenant_id


def expected_rows(model: dict[int, str]) -> list[list[Any]]:
    return [[key, model[key]] for key in sorted(model)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.lists(OPS, min_size=1, max_size=6), steps=STEPS)
async def test_a_keyed_table_reads_like_a_dictionary_model_at_every_snapshot(
    scenario_parts: tuple[httpx.AsyncClient, dict[str, str], Coordinator, CatalogPool, int],
    first: list[tuple[str, int, str]], steps: list[tuple[Any, ...]],
) -> None:
    scenario = Scenario(*scenario_parts)
    scenario.before_table = (await head_watermark(scenario.pool, scenario.tenant_id))[0]
    await create_table(scenario.client, scenario.headers, scenario.table, columns=COLUMNS, primary_key=["id"])
    await scenario.write(first)
    for step in steps:
        if step[0] == "write":
            await scenario.write(step[1])
        elif step[0] == "retry":
            await scenario.retry(step[1])
        elif step[0] == "mixed":
            await scenario.mixed(step[1], step[2])
        else:
            await scenario.publish()
    await scenario.publish()

    assert scenario.history  # the first write is published at the latest by the final run
    assert await scenario.read(None) == expected_rows(scenario.model)
    for snapshot_id, model in scenario.history:
        assert await scenario.read(snapshot_id) == expected_rows(model), snapshot_id

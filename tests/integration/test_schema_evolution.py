from __future__ import annotations

import asyncio
from typing import Any

import httpx

from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table

COLUMNS = [{"name": "id", "type": "int64", "nullable": False}, {"name": "qty", "type": "int32"}]


async def _query(client: httpx.AsyncClient, headers: dict[str, str], sql: str, **extra: Any) -> dict[str, Any]:
    response = await client.post("/v1/query", headers=headers, json={"sql": sql, **extra})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _ingest(client: httpx.AsyncClient, headers: dict[str, str], table: str, rows: list[dict[str, Any]], tag: str) -> dict[str, Any]:
    body = {"records": [{"idempotency_key": f"{tag}-{i}", "payload": row} for i, row in enumerate(rows)]}
    response = await client.post(f"/v1/ingest/{table}", headers=headers, json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_added_columns_read_as_null_for_old_rows_and_widened_types_read_as_one_type(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    headers = await make_key()
    await create_table(client, headers, "orders", columns=COLUMNS)
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    await _ingest(client, headers, "orders", [{"id": 1, "qty": 5}, {"id": 2, "qty": 2_000_000_000}], "v1")
    await coordinator.run_once()

    patched = await client.patch("/v1/tables/orders", headers=headers, json={"columns": [
        {"name": "id", "type": "int64", "nullable": False}, {"name": "qty", "type": "int64"},
        {"name": "note", "type": "string"}]})
    assert patched.status_code == 200, patched.text
    assert patched.json()["schema_version"] == 2
    receipt = await _ingest(client, headers, "orders", [{"id": 3, "qty": 9_000_000_000, "note": "big"}], "v2")
    assert receipt["schema_version"] == 2
    old_shape = await client.post("/v1/ingest/orders", headers=headers, json={"records": [
        {"idempotency_key": "v2-old-shape", "payload": {"id": 4, "qty": 1}}]})
    assert old_shape.status_code == 200
    await coordinator.run_once()

    body = await _query(client, headers, "SELECT id, qty, note FROM orders ORDER BY id")
    assert body["rows"] == [[1, 5, None], [2, 2_000_000_000, None], [3, 9_000_000_000, "big"], [4, 1, None]]
    assert body["columns"] == [{"name": "id", "type": "BIGINT"}, {"name": "qty", "type": "BIGINT"},
                               {"name": "note", "type": "VARCHAR"}]
    typed = await _query(client, headers, "SELECT typeof(qty) AS t, count(*) FROM orders GROUP BY 1")
    assert typed["rows"] == [["BIGINT", 4]]

    history = (await client.get("/v1/tables/orders/schemas", headers=headers)).json()
    assert [s["schema_version"] for s in history["schemas"]] == [1, 2]
    assert [c["name"] for c in history["schemas"][0]["columns"]] == ["id", "qty"]


async def test_an_incompatible_change_is_refused_with_reasons(client: httpx.AsyncClient, make_key: KeyMaker) -> None:
    headers = await make_key()
    await create_table(client, headers, "orders", columns=COLUMNS)
    refused = await client.patch("/v1/tables/orders", headers=headers, json={"columns": [
        {"name": "id", "type": "int64", "nullable": False}, {"name": "qty", "type": "string"},
        {"name": "must", "type": "int32", "nullable": False}]})
    assert refused.status_code == 409
    body = refused.json()
    assert body["error_code"] == "SCHEMA_INCOMPATIBLE"
    assert len(body["context"]["reasons"]) == 2 and body["context"]["compatibility_mode"] == "backward"
    dropped_column = await client.patch("/v1/tables/orders", headers=headers, json={"columns": COLUMNS[:1]})
    assert dropped_column.status_code == 409
    forward = await client.patch("/v1/tables/orders", headers=headers, json={
        "columns": COLUMNS[:1], "compatibility_mode": "forward"})
    assert forward.status_code == 200 and forward.json()["compatibility_mode"] == "forward"
    assert (await client.get("/v1/tables/orders", headers=headers)).json()["schema_version"] == 2


async def test_concurrent_alters_cannot_both_create_the_same_version(
    client: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    headers = await make_key()
    await create_table(client, headers, "orders", columns=COLUMNS)

    def add(name: str) -> dict[str, Any]:
        return {"columns": [*COLUMNS, {"name": name, "type": "string"}]}

    responses = await asyncio.gather(*(client.patch("/v1/tables/orders", headers=headers, json=add(f"c{i}"))
                                       for i in range(6)))
    ok = [r for r in responses if r.status_code == 200]
    # each success saw the previous one's schema: a later "add c2" drops c1, which backward refuses
    assert len(ok) >= 1 and all(r.status_code in (200, 409) for r in responses), [r.text for r in responses]
    versions = sorted(r.json()["schema_version"] for r in ok)
    assert versions == list(range(2, 2 + len(ok)))


async def test_drop_then_recreate_then_time_travel_sees_the_old_table(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    headers = await make_key()
    await create_table(client, headers, "things", columns=COLUMNS)
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    await _ingest(client, headers, "things", [{"id": 1, "qty": 1}, {"id": 2, "qty": 2}], "old")
    await coordinator.run_once()
    before = await _query(client, headers, "SELECT * FROM things ORDER BY id")
    pending = await _ingest(client, headers, "things", [{"id": 3, "qty": 3}], "pending")

    dropped = await client.delete("/v1/tables/things", headers=headers)
    assert dropped.status_code == 200, dropped.text
    assert (await client.get("/v1/tables/things", headers=headers)).status_code == 404
    gone = await client.post("/v1/query", headers=headers, json={"sql": "SELECT * FROM things"})
    assert gone.status_code == 404 and gone.json()["error_code"] == "TABLE_NOT_FOUND"
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT state, failure_reason FROM ingest_segment WHERE max_token = %s",
                                 (pending["max_visibility_token"],))
        event = await cur.fetchone()
    assert event == {"state": "failed", "failure_reason": "table_dropped"}
    lag = (await client.get("/v1/lag", headers=headers)).json()
    assert lag["latest_visibility_token"] == pending["max_visibility_token"], "a failed event counts as resolved"

    await create_table(client, headers, "things", columns=[
        {"name": "id", "type": "string", "nullable": False}, {"name": "label", "type": "string"}])
    await _ingest(client, headers, "things", [{"id": "a", "label": "new"}], "new")
    await coordinator.run_once()
    now = await _query(client, headers, "SELECT * FROM things")
    assert now["rows"] == [["a", "new"]] and [c["name"] for c in now["columns"]] == ["id", "label"]
    travel = await _query(client, headers, "SELECT * FROM things ORDER BY id", snapshot_id=before["snapshot_id"])
    assert travel["rows"] == before["rows"] == [[1, 1], [2, 2]]
    assert travel["columns"] == before["columns"]

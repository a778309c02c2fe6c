from __future__ import annotations

import io

import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table, records

PARQUET = {"Content-Type": "application/vnd.apache.parquet"}


def parquet_body(rows: int, offset: int = 0) -> bytes:
    table = pa.table({
        "id": pa.array(range(offset, offset + rows), pa.int64()),
        "name": pa.array([f"n{i % 97}" for i in range(rows)], pa.string()),
        "amount": pa.array([i % 1000 for i in range(rows)], pa.int64()),
    })
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


async def test_a_million_row_parquet_backfill_is_one_snapshot_and_a_retry_changes_nothing(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    body = parquet_body(1_000_000)
    first = await client.post("/v1/tables/events/backfill?backfill_id=hist-2024", headers={**headers, **PARQUET},
                              content=body, timeout=120)
    assert first.status_code == 200, first.text
    result = first.json()
    assert result["status"] == "visible" and result["record_count"] == 1_000_000
    assert (result["min_visibility_token"], result["max_visibility_token"]) == (1, 1_000_000)
    snapshots = (await client.get("/v1/snapshots", headers=headers)).json()["snapshots"]
    assert [(s["kind"], s["snapshot_id"]) for s in snapshots][:1] == [("backfill", result["snapshot_id"])]
    assert [s["kind"] for s in snapshots[1:]] == ["schema"], "only the table's creation came before"
    assert snapshots[0]["max_visibility_token"] == 1_000_000
    counted = (await client.post("/v1/query", headers=headers, json={
        "sql": "SELECT count(*), count(DISTINCT id), sum(amount) FROM events",
        "min_visibility_token": result["max_visibility_token"]})).json()
    assert counted["rows"] == [[1_000_000, 1_000_000, f"{sum(i % 1000 for i in range(1_000_000))}.00"]]

    again = await client.post("/v1/tables/events/backfill?backfill_id=hist-2024", headers={**headers, **PARQUET},
                              content=body, timeout=120)
    assert again.status_code == 200
    assert again.json() == {**result, "status": "duplicate"}
    assert len((await client.get("/v1/snapshots", headers=headers)).json()["snapshots"]) == 2, "no new snapshot"
    other = await client.post("/v1/tables/events/backfill?backfill_id=hist-2024", headers={**headers, **PARQUET},
                              content=parquet_body(10), timeout=60)
    assert other.status_code == 409 and other.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"


async def test_ndjson_backfill_validates_every_row_and_shares_the_token_sequence_with_ingest(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 3)})
    bad = b"\n".join([orjson.dumps({"id": 1}), b"not json", orjson.dumps({"id": "x"}), orjson.dumps({"zz": 1})])
    refused = await client.post("/v1/tables/events/backfill?backfill_id=b1", headers={**headers, "Content-Type": "application/x-ndjson"}, content=bad)
    assert refused.status_code == 400
    assert [e["index"] for e in refused.json()["context"]["errors"]] == [1, 2, 3]
    rows = b"\n".join(orjson.dumps({"id": 100 + i, "name": "b", "amount": "1.50", "at": "2023-01-01T00:00:00Z"}) for i in range(5))
    loaded = await client.post("/v1/tables/events/backfill?backfill_id=b2", headers={**headers, "Content-Type": "application/x-ndjson"}, content=rows)
    assert loaded.status_code == 200, loaded.text
    result = loaded.json()
    assert (result["min_visibility_token"], result["max_visibility_token"]) == (4, 8)
    # tokens 1-3 are pending ingest, so the watermark must stay below them even though 4-8 are published
    lag = (await client.get("/v1/lag", headers=headers)).json()
    assert lag["latest_visibility_token"] == 0
    await Coordinator(pool, bus, store, CoordinatorConfig(owner="c")).run_once()
    body = (await client.post("/v1/query", headers=headers, json={
        "sql": "SELECT count(*), sum(amount) FROM events", "min_visibility_token": 8})).json()
    assert body["rows"] == [[8, "11.25"]]  # 0.25 + 1.25 + 2.25 ingested, 5 x 1.50 backfilled


async def test_an_abandoned_backfill_reservation_expires_and_stops_holding_the_watermark(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    from duckmesh.catalog.tokens import reserve_tokens

    headers = await make_key()
    table = await create_table(client, headers)
    reservation, _ = await reserve_tokens(pool, table["tenant_id"], table["table_id"], "crashed", b"x", 10, 0.05)
    await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 2)})
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    await coordinator.run_once()
    lag = (await client.get("/v1/lag", headers=headers)).json()
    assert lag["latest_visibility_token"] == 0, "tokens 1-10 are reserved by an unfinished backfill"
    import asyncio

    await asyncio.sleep(0.1)
    await coordinator.resolve_expired()
    lag = (await client.get("/v1/lag", headers=headers)).json()
    assert reservation.max_token == 10 and lag["latest_visibility_token"] == 12

from __future__ import annotations

import httpx

from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table, head_watermark, records, snapshot_rows


async def test_ingested_records_become_rows_of_a_published_snapshot(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    headers = await make_key("acme")
    table = await create_table(client, headers)
    response = await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 10)})
    assert response.status_code == 200, response.text
    receipt = response.json()
    assert receipt["accepted_count"] == 10
    assert receipt["max_visibility_token"] == 10

    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c1"))
    assert await coordinator.run_once() == (True, False)

    snapshot_id, watermark = await head_watermark(pool, table["tenant_id"])
    assert snapshot_id is not None and watermark == 10
    rows = await snapshot_rows(pool, store, table["tenant_id"], table["table_id"])
    assert [r["id"] for r in rows] == list(range(10))
    assert [r["_dm_token"] for r in rows] == list(range(1, 11))
    assert str(rows[3]["amount"]) == "3.25"

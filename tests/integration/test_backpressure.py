from __future__ import annotations

import asyncio

import httpx

from duckmesh.api.context import AppContext
from duckmesh.bus.operations import lag_by_tenant
from duckmesh.catalog.db import CatalogPool
from duckmesh.ingest.backpressure import Admission
from duckmesh.observability.sampler import run_lag_sampler
from tests.conftest import KeyMaker
from tests.helpers import accepted_records, create_table, records


async def _stored(pool: CatalogPool) -> int:
    return await accepted_records(pool)


async def test_a_tenant_over_its_rate_limit_gets_429_with_retry_after_and_nothing_is_stored(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, app_context: AppContext
) -> None:
    headers = await make_key()
    other = await make_key("other")
    await create_table(client, headers)
    await create_table(client, other)
    app_context.ingest.admission = Admission(rate_limit=100)
    first = await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 100)})
    assert first.status_code == 200
    second = await client.post("/v1/ingest/events", headers=headers, json={"records": records(100, 50)})
    assert second.status_code == 429
    assert second.json()["error_code"] == "RATE_LIMITED" and second.json()["retryable"] is True
    assert int(second.headers["retry-after"]) >= 1
    assert await _stored(pool) == 100
    independent = await client.post("/v1/ingest/events", headers=other, json={"records": records(0, 100)})
    assert independent.status_code == 200, "each tenant has its own bucket"


async def test_too_many_unresolved_events_shed_ingest_until_the_coordinators_catch_up(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, app_context: AppContext
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    admission = app_context.ingest.admission = Admission(max_pending=5)
    stop = asyncio.Event()
    sampler = asyncio.create_task(
        run_lag_sampler(lambda: lag_by_tenant(pool), stop, interval=0.05, on_pending=admission.observe_pending)
    )
    try:
        assert (await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 5)})).status_code == 200
        await asyncio.sleep(0.3)
        shed = await client.post("/v1/ingest/events", headers=headers, json={"records": records(5, 1)})
        assert shed.status_code == 429 and shed.json()["error_code"] == "INGEST_BACKPRESSURE"
        assert shed.headers["retry-after"] == "2" and shed.json()["context"]["pending_events"] == 5
        async with pool.connection() as conn:  # the coordinators caught up
            await conn.execute("UPDATE ingest_segment SET state = 'committed', resolved_at = now()")
        await asyncio.sleep(0.3)
        assert (await client.post("/v1/ingest/events", headers=headers, json={"records": records(5, 1)})).status_code == 200
    finally:
        stop.set()
        await sampler
    assert await _stored(pool) == 6

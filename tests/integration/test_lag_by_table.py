"""GET /v1/lag breaks the tenant's lag down per live table; the sampler keeps per-table gauges current."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from duckmesh.bus.operations import lag_by_tenant, table_lag_all
from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.observability import metrics
from duckmesh.observability.sampler import run_lag_sampler
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table, poison, records


async def _ingest(client: httpx.AsyncClient, headers: dict[str, str], table: str, start: int, count: int) -> int:
    response = await client.post(f"/v1/ingest/{table}", headers=headers,
                                 json={"records": records(start, count, prefix=table)})
    assert response.status_code == 200, response.text
    return int(response.json()["max_visibility_token"])


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "the sampler never got there"
        await asyncio.sleep(0.02)


def _gauge(gauge: metrics.Gauge, *labels: str) -> float:
    return float(gauge.labels(*labels)._value.get())


async def test_lag_names_each_tables_pending_claimed_and_failed_events_and_its_watermark(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    await create_table(client, headers, "other")
    await create_table(client, headers, "quiet")
    broken = poison(monkeypatch, "id", 1)  # the record of token 2 cannot be materialized: a dead letter
    await _ingest(client, headers, "events", 0, 3)  # tokens 1-3
    await Coordinator(pool, bus, store, CoordinatorConfig(owner="c", max_attempts=1)).run_once()
    broken[0] = False
    await _ingest(client, headers, "events", 3, 2)  # tokens 4-5
    await _ingest(client, headers, "events", 5, 2)  # tokens 6-7
    claim = await bus.claim("stalled", max_events=2, max_bytes=1 << 20, lease_seconds=60)
    assert claim is not None and [(s.min_token, s.record_count) for s in claim.segments] == [(4, 2)]
    await _ingest(client, headers, "other", 0, 2)  # tokens 8-9

    lag = (await client.get("/v1/lag", headers=headers)).json()
    assert (lag["pending_events"], lag["claimed_events"], lag["failed_events"]) == (4, 2, 1)
    assert lag["latest_visibility_token"] == 3 and lag["token_lag"] == 6
    tables = lag["tables"]
    assert set(tables) == {"events", "other", "quiet"}
    events, other, quiet = tables["events"], tables["other"], tables["quiet"]
    assert (events["pending_events"], events["claimed_events"], events["failed_events"]) == (2, 2, 1)
    assert events["watermark"] == 3 and events["latest_pending_token"] == 7
    assert events["oldest_pending_age_ms"] >= 0
    assert (other["pending_events"], other["claimed_events"], other["failed_events"]) == (2, 0, 0)
    assert other["latest_pending_token"] == 9
    assert (quiet["pending_events"], quiet["claimed_events"], quiet["latest_pending_token"]) == (0, 0, None)
    assert quiet["oldest_pending_age_ms"] is None
    assert sum(t["pending_events"] for t in tables.values()) == lag["pending_events"]


async def test_lag_shows_only_the_callers_tenant_and_no_dropped_table(
    client: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    headers = await make_key("acme")
    other = await make_key("other")
    await create_table(client, headers)
    await create_table(client, headers, "gone")
    await create_table(client, other, "secret")
    await _ingest(client, other, "secret", 0, 5)
    assert (await client.delete("/v1/tables/gone", headers=headers)).status_code == 200
    lag = (await client.get("/v1/lag", headers=headers)).json()
    assert set(lag["tables"]) == {"events"}
    assert lag["pending_events"] == 0


async def test_the_sampler_keeps_per_table_gauges_current_and_drops_the_series_of_a_dropped_table(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    headers = await make_key("sampled")
    table = await create_table(client, headers)
    await create_table(client, headers, "doomed")
    tenant = str(table["tenant_id"])
    await _ingest(client, headers, "events", 0, 3)
    await _ingest(client, headers, "doomed", 0, 2)
    stop = asyncio.Event()
    sampler = asyncio.create_task(run_lag_sampler(
        lambda: lag_by_tenant(pool), stop, interval=0.02, tables=lambda limit: table_lag_all(pool, limit)))
    try:
        await _until(lambda: _gauge(metrics.TABLE_LAG_EVENTS, tenant, "events") == 3
                     and _gauge(metrics.TABLE_LAG_EVENTS, tenant, "doomed") == 2)
        assert _gauge(metrics.TABLE_VISIBILITY_LAG, tenant, "events") >= 0

        await Coordinator(pool, bus, store, CoordinatorConfig(owner="c")).run_once()
        assert (await client.delete("/v1/tables/doomed", headers=headers)).status_code == 200
        await _until(lambda: _gauge(metrics.TABLE_VISIBILITY_TOKEN, tenant, "events") == 5)
        await _until(lambda: not any(line.startswith("duckmesh_table_") and 'table="doomed"' in line
                                     for line in metrics.render().decode().splitlines()))
    finally:
        stop.set()
        await sampler
    assert _gauge(metrics.TABLE_LAG_EVENTS, tenant, "events") == 0
    text = metrics.render().decode()
    assert f'duckmesh_table_lag_events{{table="events",tenant="{tenant}"}} 0.0' in text
    assert f'duckmesh_table_lag_events{{table="doomed",tenant="{tenant}"}}' not in text, "a dropped table's series goes"


async def test_the_samplers_table_query_is_bounded(client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool) -> None:
    headers = await make_key("many")
    for i in range(4):
        await create_table(client, headers, f"t{i}")
    assert len(await table_lag_all(pool, 2)) == 2
    assert len(await table_lag_all(pool, 100)) == 4

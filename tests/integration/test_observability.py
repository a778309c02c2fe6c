from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest

from duckmesh.api.app import create_metrics_app
from duckmesh.api.context import AppContext
from duckmesh.bus.operations import lag_by_tenant
from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.observability import metrics
from duckmesh.observability.logging import JsonFormatter
from duckmesh.observability.sampler import run_lag_sampler
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table, records

SPEC_METRICS = [
    "duckmesh_ingest_requests_total", "duckmesh_ingest_records_total", "duckmesh_ingest_duplicates_total",
    "duckmesh_ingest_rejected_total", "duckmesh_ingest_ack_latency_seconds", "duckmesh_ingest_lag_events",
    "duckmesh_visibility_lag_seconds", "duckmesh_latest_visibility_token", "duckmesh_write_to_visible_latency_seconds",
    "duckmesh_consistency_timeout_total", "duckmesh_claim_batch_size", "duckmesh_claim_retries_total",
    "duckmesh_commit_batch_latency_seconds", "duckmesh_snapshot_publish_failures_total", "duckmesh_events_failed_total",
    "duckmesh_query_requests_total", "duckmesh_query_latency_seconds", "duckmesh_query_scanned_files",
    "duckmesh_query_scanned_bytes", "duckmesh_query_cache_hits_total", "duckmesh_query_cache_misses_total",
    "duckmesh_http_requests_total", "duckmesh_http_request_duration_seconds",
]


async def test_metrics_endpoint_exposes_every_ingest_coordinator_query_and_http_metric(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 3)})
    await Coordinator(pool, bus, store, CoordinatorConfig(owner="c")).run_once()
    await client.post("/v1/query", headers=headers, json={"sql": "SELECT count(*) FROM events"})
    assert (await client.get("/v1/metrics")).status_code == 404  # never on the public listener
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_metrics_app()), base_url="http://m") as scrape:
        text = (await scrape.get("/v1/metrics")).text
    for name in SPEC_METRICS:
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert 'duckmesh_http_requests_total{method="POST",route="/v1/ingest/{table}",status="200"}' in text


async def test_lag_gauges_are_kept_current_by_the_background_sampler(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool
) -> None:
    headers = await make_key("lagging")
    table = await create_table(client, headers)
    await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 4)})
    stop = asyncio.Event()
    sampler = asyncio.create_task(run_lag_sampler(lambda: lag_by_tenant(pool), stop, interval=0.05))
    await asyncio.sleep(0.2)
    stop.set()
    await sampler
    tenant = str(table["tenant_id"])
    assert metrics.INGEST_LAG_EVENTS.labels(tenant)._value.get() == 4
    assert metrics.VISIBILITY_LAG.labels(tenant)._value.get() >= 0


async def test_every_query_leaves_an_audit_row(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, app_context: AppContext
) -> None:
    headers = await make_key()
    await client.post("/v1/query", headers=headers, json={"sql": "SELECT 42"})
    await client.post("/v1/query", headers=headers, json={"sql": "SELECT * FROM nowhere"})
    for _ in range(100):  # written off the request path, in batches
        if not app_context.query.audit.pending:
            break
        await asyncio.sleep(0.05)
    assert app_context.query.audit.pending == 0, "the background writer wrote the rows by itself"
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT status, error_code, row_count, sql_hash, trace_id FROM query_audit ORDER BY audit_id")
        rows = await cur.fetchall()
    assert [(r["status"], r["error_code"], r["row_count"]) for r in rows] == [
        ("ok", None, 1), ("error", "TABLE_NOT_FOUND", None)]
    assert all(len(r["sql_hash"]) == 64 and r["trace_id"] for r in rows)


async def test_trace_id_is_reused_echoed_and_logged(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="duckmesh.access")
    response = await client.get("/v1/tables", headers={"X-Trace-ID": "my-trace-1"})
    assert response.headers["x-trace-id"] == "my-trace-1"
    assert response.json()["trace_id"] == "my-trace-1"
    parent = await client.get("/v1/health", headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    assert parent.headers["x-trace-id"] == "0af7651916cd43dd8448eb211c80319c"
    access = [r for r in caplog.records if r.getMessage() == "http_request"]
    line = json.loads(JsonFormatter("duckmesh-test").format(access[0]))
    assert line["route"] == "/v1/tables" and line["status"] == 401 and line["service"] == "duckmesh-test"
    assert {"timestamp", "level", "event", "duration_ms"} <= set(line)


async def test_unknown_routes_and_methods_answer_json_errors(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error_code"] == "NOT_FOUND"
    wrong = await client.delete("/v1/health")
    assert wrong.status_code == 405 and wrong.json()["error_code"] == "METHOD_NOT_ALLOWED"


async def test_ready_reports_each_check(client: httpx.AsyncClient) -> None:
    ready = await client.get("/v1/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"catalog": "ok", "migrations": "ok", "object_store": "ok"}


async def test_admin_actions_are_in_the_tenants_audit_trail(client: httpx.AsyncClient, make_key: KeyMaker) -> None:
    headers = await make_key()
    other = await make_key("other")
    await create_table(client, headers)
    await client.post("/v1/compaction/run", headers=headers, json={"dry_run": True})
    trail = (await client.get("/v1/audit", headers=headers)).json()["entries"]
    assert [e["action"] for e in trail] == ["compaction.run", "table.create"]
    key_id = headers["Authorization"].split("_")[1]
    assert all(e["trace_id"] and e["actor"] == key_id for e in trail)
    assert (await client.get("/v1/audit", headers=other)).json()["entries"] == []

"""Emergency read-only mode: writes answer 503 READ_ONLY (retryable, Retry-After) while queries are
served and accepted events still become visible; per tenant (API or CLI) and global (CLI only);
audited, visible in /v1/ready and the metrics, cached per process and invalidated by NOTIFY."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from duckmesh.api.context import AppContext
from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog import read_only
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.notify import READ_ONLY_CHANNEL, Listener
from duckmesh.catalog.read_only import Actor, ReadOnlyCache
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.domain import Role, TenantId
from duckmesh.errors import ReadOnly
from duckmesh.observability import metrics
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import EVENTS_COLUMNS, create_table, records

NDJSON = b'{"id": 1, "name": "a", "amount": "1.00", "at": "2024-05-01T12:00:00Z"}\n'


async def _writes(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, httpx.Response]:
    """One of every write the mode refuses."""
    return {
        "ingest": await client.post("/v1/ingest/events", headers=headers, json={"records": records(100, 2)}),
        "backfill": await client.post("/v1/tables/events/backfill", params={"backfill_id": "b1"}, headers=headers,
                                      content=NDJSON),
        "create": await client.post("/v1/tables", headers=headers, json={"table_name": "new", "columns": EVENTS_COLUMNS}),
        "alter": await client.patch("/v1/tables/events", headers=headers,
                                    json={"columns": [*EVENTS_COLUMNS, {"name": "extra", "type": "string"}]}),
        "drop": await client.delete("/v1/tables/events", headers=headers),
        "replay": await client.post("/v1/dead-letters/replay", headers=headers, json={"event_ids": [1]}),
    }


def _refused(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["error_code"] == "READ_ONLY" and body["retryable"] is True
    assert int(response.headers["retry-after"]) >= 1
    return dict(body)


async def _switch(client: httpx.AsyncClient, headers: dict[str, str], enabled: bool, reason: str | None = None) -> Any:
    body: dict[str, Any] = {"enabled": enabled}
    if reason is not None:
        body["reason"] = reason
    response = await client.put("/v1/read-only", headers=headers, json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_read_only_tenant_refuses_every_write_serves_queries_and_the_other_tenants_still_write(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool
) -> None:
    headers = await make_key("acme")
    other = await make_key("other")
    await create_table(client, headers)
    await create_table(client, other)
    assert (await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 3)})).status_code == 200

    answer = await _switch(client, headers, True, "restoring a backup")
    assert answer["read_only"] is True and answer["global"] is None
    assert answer["tenant"]["reason"] == "restoring a backup" and answer["tenant"]["scope"] == "tenant"

    for name, response in (await _writes(client, headers)).items():
        body = _refused(response)
        assert body["context"]["scope"] == "tenant", name
        assert "restoring a backup" in body["message"]
    query = await client.post("/v1/query", headers=headers, json={"sql": "SELECT count(*) FROM events"})
    assert query.status_code == 200, query.text
    assert (await client.get("/v1/tables/events", headers=headers)).status_code == 200
    assert (await client.post("/v1/ingest/events", headers=other, json={"records": records(0, 1)})).status_code == 200

    assert (await _switch(client, headers, False))["read_only"] is False
    assert (await client.post("/v1/ingest/events", headers=headers, json={"records": records(3, 1)})).status_code == 200
    trail = (await client.get("/v1/audit", headers=headers)).json()["entries"]
    switched = [e for e in trail if e["action"].startswith("read_only.")]
    assert [e["action"] for e in switched] == ["read_only.off", "read_only.on"]
    assert switched[1]["details"]["reason"] == "restoring a backup" and switched[1]["trace_id"]


async def test_events_accepted_before_the_switch_still_become_visible_while_read_only(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    token = (await client.post("/v1/ingest/events", headers=headers,
                               json={"records": records(0, 5)})).json()["max_visibility_token"]
    await _switch(client, headers, True, "incident 42")
    await Coordinator(pool, bus, store, CoordinatorConfig(owner="c")).run_once()
    query = await client.post("/v1/query", headers=headers, json={
        "sql": "SELECT count(*) FROM events", "min_visibility_token": token, "consistency_timeout_ms": 5000})
    assert query.status_code == 200, query.text
    assert query.json()["rows"] == [[5]]


async def test_the_global_switch_is_only_the_operators_and_stops_every_tenant(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, app_context: AppContext
) -> None:
    headers = await make_key("acme")
    other = await make_key("other")
    await create_table(client, headers)
    await create_table(client, other)
    refused = await client.put("/v1/read-only", headers=headers,
                               json={"enabled": True, "reason": "all of you", "global": True})
    assert refused.status_code == 400, "no key can reach the global switch"

    async with pool.connection() as conn:  # what `duckmesh read-only on --global` does
        await read_only.switch_on(conn, None, "catalog maintenance", Actor())
    app_context.read_only.invalidate()
    for tenant in (headers, other):
        body = _refused(await client.post("/v1/ingest/events", headers=tenant, json={"records": records(0, 1)}))
        assert body["context"]["scope"] == "global"
    state = (await client.get("/v1/read-only", headers=headers)).json()
    assert state["read_only"] is True and state["tenant"] is None and state["global"]["reason"] == "catalog maintenance"
    assert (await _switch(client, headers, False))["read_only"] is True, "a tenant cannot lift the global switch"

    ready = await client.get("/v1/ready")
    assert ready.status_code == 200, "read-only is still ready: queries are served"
    assert ready.json()["mode"] == "read_only" and ready.json()["read_only"] == {"global": True, "tenants": 0}
    text = metrics.render().decode()
    assert "duckmesh_read_only_global 1.0" in text
    assert 'duckmesh_read_only_rejected_total{scope="global",tenant="' in text

    async with pool.connection() as conn:
        await read_only.switch_off(conn, None, Actor())
        cur = await conn.execute("SELECT action, actor, tenant_id FROM admin_audit WHERE object_type = 'read_only'"
                                 " ORDER BY audit_id")
        trail = await cur.fetchall()
    assert [(r["action"], r["actor"], r["tenant_id"]) for r in trail] == [
        ("read_only.on", "cli", None), ("read_only.off", "cli", None)]
    app_context.read_only.invalidate()
    assert (await client.post("/v1/ingest/events", headers=other, json={"records": records(0, 1)})).status_code == 200
    ready = (await client.get("/v1/ready")).json()
    assert ready["mode"] == "read_write"
    assert "duckmesh_read_only_global 0.0" in metrics.render().decode()


async def test_a_switch_made_by_another_process_takes_effect_through_notify(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, app_context: AppContext, dsn: str
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    assert (await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 1)})).status_code == 200
    listener = Listener(dsn, (READ_ONLY_CHANNEL,), app_context.read_only.invalidate)
    await listener.start()
    try:
        tenant = TenantId((await client.get("/v1/lag", headers=headers)).json()["tenant_id"])
        async with CatalogPool(dsn, max_size=1) as elsewhere, elsewhere.connection() as conn:
            await read_only.switch_on(conn, tenant, "from the CLI", Actor())
        deadline = asyncio.get_running_loop().time() + 4  # well inside the 5 s TTL: NOTIFY did it
        while True:
            response = await client.post("/v1/ingest/events", headers=headers, json={"records": records(1, 1)})
            if response.status_code == 503:
                break
            assert response.status_code == 200, response.text
            assert asyncio.get_running_loop().time() < deadline, "the NOTIFY never reached the cache"
            await asyncio.sleep(0.02)
        _refused(response)
    finally:
        await listener.stop()


async def test_the_cache_answers_from_memory_until_its_ttl_when_no_notification_arrives(pool: CatalogPool) -> None:
    now = [1000.0]
    cache = ReadOnlyCache(pool, ttl=5.0, clock=lambda: now[0])
    async with pool.connection() as conn:
        tenant = TenantId((await (await conn.execute(
            "INSERT INTO tenant (name) VALUES ('t') RETURNING tenant_id")).fetchone() or {})["tenant_id"])
    await cache.check_writable(tenant)
    async with pool.connection() as conn:
        await read_only.switch_on(conn, tenant, "quiet switch", Actor())
    now[0] += 4.9
    await cache.check_writable(tenant)  # still the cached state: no catalog read per write
    now[0] += 0.2
    with pytest.raises(ReadOnly):
        await cache.check_writable(tenant)


async def test_while_the_catalog_cannot_be_read_the_cache_keeps_the_last_known_switches(dsn: str) -> None:
    now = [1000.0]
    async with CatalogPool(dsn, max_size=1) as pool:
        cache = ReadOnlyCache(pool, ttl=5.0, clock=lambda: now[0])
        async with pool.connection() as conn:
            tenant = TenantId((await (await conn.execute(
                "INSERT INTO tenant (name) VALUES ('t') RETURNING tenant_id")).fetchone() or {})["tenant_id"])
            await read_only.switch_on(conn, tenant, "before the outage", Actor())
        with pytest.raises(ReadOnly):
            await cache.check_writable(tenant)
    now[0] += 10  # stale, and the pool is closed: the reload fails
    with pytest.raises(ReadOnly):
        await cache.check_writable(tenant)
    assert cache._fresh(), "the failed reload is not retried by every request in turn"


async def test_unauthenticated_and_unauthorized_callers_learn_nothing_about_read_only_mode(
    client: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    headers = await make_key("acme")
    reader = await make_key("acme", roles=[Role.QUERY_READER])
    await create_table(client, headers)
    await _switch(client, headers, True, "secret incident")
    keyless = await client.post("/v1/ingest/events", json={"records": records(0, 1)})
    assert keyless.status_code == 401
    assert (await client.post("/v1/ingest/events", headers=reader, json={"records": records(0, 1)})).status_code == 403
    assert (await client.get("/v1/read-only", headers=reader)).status_code == 403
    assert (await client.put("/v1/read-only", headers=reader, json={"enabled": False})).status_code == 403


@pytest.mark.parametrize("body", [
    {"enabled": True}, {"enabled": True, "reason": ""}, {"enabled": True, "reason": "nul\u0000byte"},
    {"enabled": "maybe", "reason": "x"}, {"reason": "x"},
])
async def test_a_bad_switch_request_is_a_400(client: httpx.AsyncClient, make_key: KeyMaker, body: dict[str, Any]) -> None:
    headers = await make_key()
    response = await client.put("/v1/read-only", headers=headers, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "VALIDATION_FAILED"

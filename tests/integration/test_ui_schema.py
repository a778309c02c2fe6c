"""GET /v1/ui/schema: the caller tenant's tables for tools, typed, with keys, row counts and a
bounded number of sample rows read through the query path (sandbox, limits, audit)."""

from __future__ import annotations

import httpx

from duckmesh.api.context import AppContext
from duckmesh.catalog.db import CatalogPool
from duckmesh.domain import Role
from tests.conftest import KeyMaker, QueryCtx
from tests.helpers import EVENTS_COLUMNS, create_table, head_watermark, records


async def schema(client: httpx.AsyncClient, headers: dict[str, str], **params: int) -> httpx.Response:
    return await client.get("/v1/ui/schema", headers=headers, params=params)


async def test_the_schema_lists_typed_columns_keys_logical_row_counts_and_three_sample_rows(
    ctx: QueryCtx, pool: CatalogPool
) -> None:
    client, headers, coordinator = ctx
    table = await create_table(client, headers, "events")
    await create_table(client, headers, "users", columns=[
        {"name": "id", "type": "int64", "nullable": False}, {"name": "name", "type": "string"}], primary_key=["id"])
    await create_table(client, headers, "empty", columns=[{"name": "x", "type": "int32"}])
    assert (await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 10)})).status_code == 200
    upserts = [{"idempotency_key": f"u{i}", "op": "upsert", "payload": {"id": i % 2, "name": f"v{i}"}} for i in range(4)]
    assert (await client.post("/v1/ingest/users", headers=headers, json={"records": upserts})).status_code == 200
    await coordinator.run_once()

    response = await schema(client, headers)

    assert response.status_code == 200, response.text
    body = response.json()
    snapshot_id, watermark = await head_watermark(pool, table["tenant_id"])
    assert (body["tenant_id"], body["snapshot_id"], body["max_visibility_token"]) == (
        table["tenant_id"], snapshot_id, watermark)
    assert body["snapshot_time"] is not None
    by_name = {t["table_name"]: t for t in body["tables"]}
    assert sorted(by_name) == ["empty", "events", "users"]
    events = by_name["events"]
    assert events["columns"] == [{"nullable": c.get("nullable", True), **c} for c in EVENTS_COLUMNS]
    assert events["primary_key"] == [] and events["row_count"] == 10
    assert len(events["sample_rows"]) == 3
    assert all(len(row) == len(EVENTS_COLUMNS) and row[2].endswith(".25") for row in events["sample_rows"])
    assert by_name["users"]["primary_key"] == ["id"]
    assert by_name["users"]["row_count"] == 2, "keyed tables count rows after the latest-wins merge"
    assert (by_name["empty"]["row_count"], by_name["empty"]["sample_rows"]) == (0, [])


async def test_sample_rows_are_bounded_by_the_query_parameter(ctx: QueryCtx) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers, "events")
    assert (await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 30)})).status_code == 200
    await coordinator.run_once()

    for asked, expected in ((0, 0), (1, 1), (20, 20)):
        response = await schema(client, headers, sample_rows=asked)
        assert response.status_code == 200
        assert len(response.json()["tables"][0]["sample_rows"]) == expected
    for refused in (-1, 21):
        response = await schema(client, headers, sample_rows=refused)
        assert response.status_code == 400
        assert set(response.json()) == {"error_code", "message", "retryable", "context", "trace_id"}


async def test_samples_and_counts_go_through_the_query_path_under_the_callers_key(
    ctx: QueryCtx, pool: CatalogPool, make_key: KeyMaker, app_context: AppContext
) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers, "events")
    assert (await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 3)})).status_code == 200
    await coordinator.run_once()
    reader = await make_key("acme", roles=[Role.QUERY_READER])
    await app_context.query.audit.flush()
    async with pool.connection() as conn:
        before = (await (await conn.execute("SELECT count(*) AS n FROM query_audit")).fetchone() or {})["n"]

    assert (await schema(client, reader)).status_code == 200

    await app_context.query.audit.flush()
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT key_id, status, row_count FROM query_audit ORDER BY audit_id")
        audited = (await cur.fetchall())[before:]
    # one count query over every table, one sample query per table, both under the reader's key
    assert sorted((r["status"], r["row_count"]) for r in audited) == [("ok", 1), ("ok", 3)]
    assert len({r["key_id"] for r in audited}) == 1 and audited[0]["key_id"] is not None


async def test_the_schema_shows_only_the_callers_tenant_and_needs_query_reader(
    ctx: QueryCtx, make_key: KeyMaker
) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers, "events")
    other = await make_key("other")
    await create_table(client, other, "secret_payroll", columns=[{"name": "note", "type": "string"}])
    assert (await client.post("/v1/ingest/secret_payroll", headers=other, json={"records": [
        {"idempotency_key": "s", "payload": {"note": "top-secret-value"}}]})).status_code == 200
    await coordinator.run_once()

    mine = await schema(client, headers)

    assert [t["table_name"] for t in mine.json()["tables"]] == ["events"]
    assert "secret_payroll" not in mine.text and "top-secret-value" not in mine.text
    writer = await make_key("acme", roles=[Role.INGEST_WRITER])
    assert (await schema(client, writer)).status_code == 403


async def test_a_table_named_like_a_sql_keyword_is_counted_and_sampled(ctx: QueryCtx) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers, "order", columns=[{"name": "select", "type": "int32"}])
    assert (await client.post("/v1/ingest/order", headers=headers, json={"records": [
        {"idempotency_key": "o1", "payload": {"select": 7}}]})).status_code == 200
    await coordinator.run_once()

    table = (await schema(client, headers)).json()["tables"][0]

    assert (table["table_name"], table["row_count"], table["sample_rows"]) == ("order", 1, [[7]])


async def test_a_tenant_without_tables_or_snapshots_gets_an_empty_schema(client: httpx.AsyncClient, make_key: KeyMaker) -> None:
    headers = await make_key("fresh")
    response = await schema(client, headers)
    assert response.status_code == 200, response.text
    assert {k: response.json()[k] for k in ("tables", "snapshot_id", "max_visibility_token")} == {
        "tables": [], "snapshot_id": None, "max_visibility_token": 0}

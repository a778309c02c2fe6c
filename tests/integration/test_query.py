from __future__ import annotations

import asyncio

import pyarrow as pa

from tests.conftest import QueryCtx as Ctx
from tests.helpers import create_table, records
from tests.helpers import post_query as q


async def test_a_table_with_no_data_is_queryable_with_its_columns(ctx: Ctx) -> None:
    client, headers, _ = ctx
    await create_table(client, headers)
    response = await q(client, headers, "SELECT * FROM events")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [c["name"] for c in body["columns"]] == ["id", "name", "amount", "at"]
    assert body["rows"] == [] and body["max_visibility_token"] == 0
    assert body["snapshot_id"] is not None, "creating the table published the snapshot that pins it"


async def test_query_sees_published_rows_and_never_the_hidden_columns(ctx: Ctx) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers)
    await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 5)})
    await coordinator.run_once()
    body = (await q(client, headers, "SELECT * FROM events ORDER BY id")).json()
    assert [c["name"] for c in body["columns"]] == ["id", "name", "amount", "at"]
    assert body["rows"][1] == [1, "n1", "1.25", "2024-05-01T12:00:00Z"]
    assert body["row_count"] == 5 and body["max_visibility_token"] == 5
    assert body["stats"]["scanned_files"] == 1 and body["stats"]["scanned_bytes"] > 0
    hidden = await q(client, headers, "SELECT _dm_token FROM events")
    assert hidden.status_code == 400 and hidden.json()["error_code"] == "QUERY_INVALID"


async def test_keyed_tables_show_the_latest_version_per_key_and_hide_deletes(ctx: Ctx) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers, "users", columns=[
        {"name": "id", "type": "int64", "nullable": False}, {"name": "v", "type": "string"}], primary_key=["id"])
    batch = [
        {"idempotency_key": "1", "op": "insert", "payload": {"id": 1, "v": "a"}},
        {"idempotency_key": "2", "op": "upsert", "payload": {"id": 1, "v": "b"}},
        {"idempotency_key": "3", "op": "insert", "payload": {"id": 2, "v": "x"}},
        {"idempotency_key": "4", "op": "delete", "payload": {"id": 2}},
        {"idempotency_key": "5", "op": "upsert", "payload": {"id": 3, "v": "z"}},
    ]
    await client.post("/v1/ingest/users", headers=headers, json={"records": batch})
    await coordinator.run_once()
    await client.post("/v1/ingest/users", headers=headers, json={"records": [
        {"idempotency_key": "6", "op": "upsert", "payload": {"id": 3, "v": "zz"}}]})
    await coordinator.run_once()
    body = (await q(client, headers, "SELECT id, v FROM users ORDER BY id")).json()
    assert body["rows"] == [[1, "b"], [3, "zz"]]


async def test_params_are_bound_not_interpolated(ctx: Ctx) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers)
    await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 5)})
    await coordinator.run_once()
    named = await q(client, headers, "SELECT id FROM events WHERE id = $wanted", params={"wanted": 3})
    assert named.json()["rows"] == [[3]]
    positional = await q(client, headers, "SELECT id FROM events WHERE id > ? AND name <> ? ORDER BY id", params=[2, "n4"])
    assert positional.json()["rows"] == [[3]]
    injection = await q(client, headers, "SELECT count(*) FROM events WHERE name = $n", params={"n": "x' OR '1'='1"})
    assert injection.json()["rows"] == [[0]]


async def test_row_limit_truncation_is_reported(ctx: Ctx) -> None:
    client, headers, _ = ctx
    body = (await q(client, headers, "SELECT * FROM range(100)", row_limit=10)).json()
    assert body["row_count"] == 10 and body["truncated"] is True
    body = (await q(client, headers, "SELECT * FROM range(10)", row_limit=10)).json()
    assert body["row_count"] == 10 and body["truncated"] is False


async def test_values_are_encoded_losslessly(ctx: Ctx) -> None:
    client, headers, _ = ctx
    sql = ("SELECT 9007199254740993::BIGINT AS big, 12345678901234567890.123::DECIMAL(38,3) AS dec,"
           " 'nan'::DOUBLE AS nan, 'inf'::DOUBLE AS inf, DATE '2024-02-29' AS d,"
           " TIMESTAMPTZ '2024-01-01 10:00:00+02' AS ts, '\\x01\\x02'::BLOB AS b, [1, 2] AS l, {'a': 1} AS s")
    body = (await q(client, headers, sql)).json()
    assert body["rows"] == [["9007199254740993", "12345678901234567890.123", "NaN", "Infinity", "2024-02-29",
                             "2024-01-01T08:00:00Z", "AQI=", [1, 2], {"a": 1}]]


async def test_arrow_csv_and_ndjson_formats(ctx: Ctx) -> None:
    client, headers, _ = ctx
    arrow = await client.post("/v1/query", headers={**headers, "Accept": "application/vnd.apache.arrow.stream"},
                              json={"sql": "SELECT * FROM range(5) t(x)"})
    assert arrow.status_code == 200
    table = pa.ipc.open_stream(arrow.content).read_all()
    assert table.column("x").to_pylist() == [0, 1, 2, 3, 4]
    csv = await client.post("/v1/query?format=csv", headers=headers, json={"sql": "SELECT * FROM range(3) t(x)"})
    assert csv.text.splitlines() == ['"x"', "0", "1", "2"]
    ndjson = await client.post("/v1/query?format=ndjson", headers=headers, json={"sql": "SELECT * FROM range(2) t(x)"})
    assert ndjson.text.splitlines() == ['{"x":0}', '{"x":1}']


async def test_min_visibility_token_waits_for_publication(ctx: Ctx) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers)
    token = (await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 3)})).json()[
        "max_visibility_token"]
    waiting = asyncio.create_task(q(client, headers, "SELECT count(*) FROM events", min_visibility_token=token,
                                    consistency_timeout_ms=5000))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await coordinator.run_once()
    body = (await waiting).json()
    assert body["rows"] == [[3]] and body["max_visibility_token"] >= token and body["stats"]["wait_ms"] > 0


async def test_a_token_not_yet_visible_times_out_with_context(ctx: Ctx) -> None:
    client, headers, _ = ctx
    await create_table(client, headers)
    token = (await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 1)})).json()[
        "max_visibility_token"]
    response = await q(client, headers, "SELECT 1", min_visibility_token=token, consistency_timeout_ms=200)
    assert response.status_code == 504
    body = response.json()
    assert body["error_code"] == "CONSISTENCY_TIMEOUT" and body["retryable"] is True
    assert body["context"]["min_visibility_token"] == token and body["context"]["latest_visibility_token"] == 0
    assert "waited_ms" in body["context"] and "latest_snapshot_id" in body["context"]


async def test_a_token_never_issued_is_invalid_not_a_wait(ctx: Ctx) -> None:
    client, headers, _ = ctx
    response = await q(client, headers, "SELECT 1", min_visibility_token=999, consistency_timeout_ms=5000)
    assert response.status_code == 400 and response.json()["error_code"] == "VISIBILITY_TOKEN_INVALID"


async def test_wait_for_visibility_on_ingest_answers_when_visible(ctx: Ctx) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers)
    writing = asyncio.create_task(client.post("/v1/ingest/events", headers=headers, json={
        "records": records(0, 2), "wait_for_visibility": True, "visibility_timeout_ms": 5000}))
    await asyncio.sleep(0.2)
    await coordinator.run_once()
    receipt = (await writing).json()
    assert receipt["status"] == "visible" and receipt["visible_snapshot_id"] is not None
    timed_out = await client.post("/v1/ingest/events", headers=headers, json={
        "records": records(5, 1), "wait_for_visibility": True, "visibility_timeout_ms": 100})
    assert timed_out.status_code == 504
    assert timed_out.json()["context"]["max_visibility_token"] == 3


async def test_snapshot_selectors(ctx: Ctx) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers)
    await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 2)})
    await coordinator.run_once()
    first = (await q(client, headers, "SELECT count(*) FROM events")).json()
    await client.post("/v1/ingest/events", headers=headers, json={"records": records(2, 3)})
    await coordinator.run_once()
    old = (await q(client, headers, "SELECT count(*) FROM events", snapshot_id=first["snapshot_id"])).json()
    assert old["rows"] == [[2]] and old["snapshot_id"] == first["snapshot_id"]
    at_time = (await q(client, headers, "SELECT count(*) FROM events", snapshot_time=first["snapshot_time"])).json()
    assert at_time["rows"] == [[2]] and at_time["snapshot_id"] == first["snapshot_id"]
    both = await q(client, headers, "SELECT 1", snapshot_id=1, snapshot_time=first["snapshot_time"])
    assert both.status_code == 400 and both.json()["error_code"] == "SNAPSHOT_SELECTOR_CONFLICT"
    missing = await q(client, headers, "SELECT 1", snapshot_id=999999)
    assert missing.status_code == 404 and missing.json()["error_code"] == "SNAPSHOT_NOT_FOUND"
    before = await q(client, headers, "SELECT 1", snapshot_time="2000-01-01T00:00:00Z")
    assert before.status_code == 404
    scope = await q(client, headers, "SELECT 1", snapshot_id=first["snapshot_id"], min_visibility_token=5)
    assert scope.status_code == 400 and scope.json()["error_code"] == "TOKEN_SCOPE_MISMATCH"

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psycopg

from duckmesh.catalog.db import CatalogPool
from tests.conftest import KeyMaker, QueryCtx
from tests.helpers import bus_records, create_table, records


async def _events(pool: CatalogPool) -> list[dict[str, Any]]:
    return await bus_records(pool)


async def test_concurrent_retries_of_the_same_keys_store_one_event_per_key(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    body = {"records": records(0, 20)}
    responses = await asyncio.gather(*(client.post("/v1/ingest/events", headers=headers, json=body) for _ in range(50)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    receipts = [r.json() for r in responses]
    assert sum(r["accepted_count"] for r in receipts) == 20
    assert {r["max_visibility_token"] for r in receipts} == {20}, "duplicates carry the original tokens"
    events = await _events(pool)
    assert sorted(e["idempotency_key"] for e in events) == sorted(f"k-{i}" for i in range(20))

    changed = records(0, 1)
    changed[0]["payload"]["name"] = "different"
    conflict = await client.post("/v1/ingest/events", headers=headers, json={"records": changed})
    assert conflict.status_code == 409
    assert conflict.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"
    other_op = records(0, 1, op="upsert")
    assert (await client.post("/v1/ingest/events", headers=headers, json={"records": other_op})).status_code in (400, 409)
    assert len(await _events(pool)) == 20


async def test_concurrent_same_key_with_different_payloads_accepts_exactly_one(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool
) -> None:
    headers = await make_key()
    await create_table(client, headers)

    def body(i: int) -> dict[str, Any]:
        return {"records": [{"idempotency_key": "same", "payload": {"id": i, "name": f"v{i}"}}]}

    responses = await asyncio.gather(*(client.post("/v1/ingest/events", headers=headers, json=body(i)) for i in range(50)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 1 and codes.count(409) == 49
    assert len(await _events(pool)) == 1


async def test_three_bad_records_of_a_hundred_are_all_reported_and_nothing_is_stored(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    batch = records(0, 100)
    batch[7]["payload"]["id"] = "seven"
    batch[42]["payload"]["unknown_column"] = 1
    del batch[99]["payload"]["id"]
    response = await client.post("/v1/ingest/events", headers=headers, json={"records": batch})
    assert response.status_code == 400
    body = response.json()
    assert body["error_code"] == "VALIDATION_FAILED"
    reported = {e["index"]: e["errors"] for e in body["context"]["errors"]}
    assert sorted(reported) == [7, 42, 99]
    assert any("id" in reason for reason in reported[7])
    assert any("unknown_column" in reason for reason in reported[42])
    assert any("required" in reason for reason in reported[99])
    assert body["trace_id"] and response.headers["x-trace-id"] == body["trace_id"]
    assert await _events(pool) == []
    # and the next good request gets token 1: the refused one used none
    ok = await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 1)})
    assert ok.json()["max_visibility_token"] == 1


async def test_tokens_are_gap_free_and_commit_ordered_under_concurrent_ingest(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, dsn: str
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    await create_table(client, headers, "other")
    done = asyncio.Event()
    violations: list[str] = []

    async def observe() -> None:
        # Whenever the committed counter says T was issued, every token <= T must already exist.
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while not done.is_set():
                row = await (await conn.execute("SELECT next_visibility_token - 1 FROM tenant_counter")).fetchone()
                issued = row[0] if row else 0
                cur = await conn.execute(
                    "SELECT coalesce(sum(record_count), 0) FROM ingest_segment WHERE max_token <= %s", (issued,))
                count = (await cur.fetchone() or (0,))[0]
                if count != issued:
                    violations.append(f"issued {issued} but {count} events are visible")
                await asyncio.sleep(0)

    async def write(writer: int) -> list[int]:
        tokens = []
        for batch in range(6):
            table = "events" if writer % 2 else "other"
            body = {"records": records(batch * 10, 10, prefix=f"w{writer}-{batch}")}
            response = await client.post(f"/v1/ingest/{table}", headers=headers, json=body)
            assert response.status_code == 200, response.text
            tokens.append(response.json()["max_visibility_token"])
        return tokens

    observer = asyncio.create_task(observe())
    results = await asyncio.gather(*(write(w) for w in range(12)))
    done.set()
    await observer
    assert violations == []
    events = await _events(pool)
    assert [e["visibility_token"] for e in events] == list(range(1, 12 * 6 * 10 + 1))
    for tokens in results:
        assert tokens == sorted(tokens), "a writer's later request never gets a lower token"


async def test_request_shape_errors_use_the_contract_codes(client: httpx.AsyncClient, make_key: KeyMaker) -> None:
    headers = await make_key()
    await create_table(client, headers)
    await create_table(client, headers, "keyed", primary_key=["id"])

    async def post(table: str, **kwargs: Any) -> httpx.Response:
        return await client.post(f"/v1/ingest/{table}", headers=headers, **kwargs)

    assert (await post("events", json={"records": []})).json()["error_code"] == "RECORDS_REQUIRED"
    assert (await post("events", content=b"{not json")).json()["error_code"] == "INVALID_JSON"
    assert (await post("nope", json={"records": records(0, 1)})).status_code == 404
    assert (await post("nope", json={"records": records(0, 1)})).json()["error_code"] == "TABLE_NOT_FOUND"
    unknown_field = await post("events", json={"records": records(0, 1), "extra": True})
    assert unknown_field.status_code == 400 and unknown_field.json()["error_code"] == "VALIDATION_FAILED"
    upsert = await post("events", json={"records": records(0, 1, op="upsert")})
    assert upsert.status_code == 400 and upsert.json()["error_code"] == "OP_NOT_SUPPORTED"
    bad_op = await post("keyed", json={"records": records(0, 1, op="merge")})
    assert bad_op.json()["error_code"] == "VALIDATION_FAILED"
    delete = await post("keyed", json={"records": [{"idempotency_key": "d", "op": "delete", "payload": {"id": 3}}]})
    assert delete.status_code == 200, delete.text


async def test_oversized_requests_are_refused_with_413(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, app_context: Any
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    too_many = app_context.settings.max_records_per_request + 1
    many = await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, too_many)})
    assert many.status_code == 413 and many.json()["error_code"] == "PAYLOAD_TOO_LARGE"
    huge = b'{"records": [' + b" " * (app_context.settings.max_body_bytes + 1) + b"]}"
    big = await client.post("/v1/ingest/events", headers=headers, content=huge)
    assert big.status_code == 413 and big.json()["error_code"] == "PAYLOAD_TOO_LARGE"
    assert await _events(pool) == []


async def test_concurrent_retries_of_one_idempotency_key_header_store_the_request_once(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    rows = [r["payload"] for r in records(0, 30)]
    retry = {**headers, "Idempotency-Key": "batch-0001"}
    responses = await asyncio.gather(*(client.post("/v1/ingest/events", headers=retry, json=rows) for _ in range(40)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    receipts = [r.json() for r in responses]
    assert all(r == receipts[0] for r in receipts), "every retry answers the first request's receipt"
    assert receipts[0]["accepted_count"] == 30 and receipts[0]["max_visibility_token"] == 30
    replayed = [r.headers.get("Idempotent-Replayed") for r in responses]
    assert replayed.count(None) == 1 and replayed.count("true") == 39, "exactly one of the retries stored it"
    assert len(await _events(pool)) == 30

    other_body = await client.post("/v1/ingest/events", headers=retry, json=rows[:29])
    assert other_body.status_code == 409 and other_body.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"
    fresh = await client.post("/v1/ingest/events", headers={**headers, "Idempotency-Key": "batch-0002"}, json=rows)
    assert fresh.json()["accepted_count"] == 30 and fresh.json()["max_visibility_token"] == 60
    async with pool.connection() as conn:
        stored = await (await conn.execute("SELECT count(*) AS n FROM ingest_request")).fetchone()
        keys = await (await conn.execute("SELECT count(*) AS n FROM ingest_key")).fetchone()
    assert stored is not None and stored["n"] == 2, "one catalog row per request"
    assert keys is not None and keys["n"] == 0, "no per-record keys without per-record idempotency keys"


async def test_a_refused_request_with_an_idempotency_key_can_be_sent_again_corrected(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool
) -> None:
    headers = {**await make_key(), "Idempotency-Key": "fix-me"}
    await create_table(client, headers)
    bad = await client.post("/v1/ingest/events", headers=headers, json=[{"id": "one"}])
    assert bad.status_code == 400 and bad.json()["error_code"] == "VALIDATION_FAILED"
    good = await client.post("/v1/ingest/events", headers=headers, json=[{"id": 1}])
    assert good.status_code == 200 and good.json()["accepted_count"] == 1
    assert len(await _events(pool)) == 1


async def test_bare_arrays_and_ndjson_bodies_are_payloads_with_options_in_the_query(
    ctx: QueryCtx,
) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers, "users", primary_key=["id"])
    array = await client.post("/v1/ingest/users?op=upsert", headers=headers,
                              json=[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    assert array.status_code == 200, array.text
    lines = b'{"id": 2, "name": "b2"}\n\n{"id": 3, "name": "c"}\n'
    waiting = asyncio.create_task(client.post(
        "/v1/ingest/users?op=upsert&wait_for_visibility=true&visibility_timeout_ms=20000",
        headers={**headers, "Content-Type": "application/x-ndjson"}, content=lines))
    while not waiting.done():
        await coordinator.run_once()
        await asyncio.sleep(0.05)
    ndjson = await waiting
    assert ndjson.status_code == 200, ndjson.text
    assert ndjson.json()["status"] == "visible" and ndjson.json()["max_visibility_token"] == 4
    answer = await client.post("/v1/query", headers=headers, json={
        "sql": "SELECT id, name FROM users ORDER BY id", "min_visibility_token": 4})
    assert answer.json()["rows"] == [[1, "a"], [2, "b2"], [3, "c"]]

    bad_line = await client.post("/v1/ingest/users", headers={**headers, "Content-Type": "application/x-ndjson"},
                                 content=b'{"id": 9}\n{"id": "ten"}\n')
    assert bad_line.status_code == 400
    assert [e["index"] for e in bad_line.json()["context"]["errors"]] == [1]
    broken = await client.post("/v1/ingest/users", headers={**headers, "Content-Type": "application/x-ndjson"},
                               content=b'{"id": 9}\n{"id": \n')
    assert broken.status_code == 400 and broken.json()["error_code"] == "INVALID_JSON"
    neither = await client.post("/v1/ingest/users", headers=headers, content=b'"just a string"')
    assert neither.status_code == 400 and neither.json()["error_code"] == "INVALID_JSON"
    deleted = await client.post("/v1/ingest/users?op=delete", headers=headers, json=[{"id": 1}])
    assert deleted.status_code == 200, deleted.text
    await coordinator.run_once()
    answer = await client.post("/v1/query", headers=headers, json={
        "sql": "SELECT id FROM users ORDER BY id", "min_visibility_token": deleted.json()["max_visibility_token"]})
    assert answer.json()["rows"] == [[2], [3]]
    unknown_op = await client.post("/v1/ingest/users?op=merge", headers=headers, json=[{"id": 1}])
    assert unknown_op.status_code == 400 and unknown_op.json()["error_code"] == "VALIDATION_FAILED"

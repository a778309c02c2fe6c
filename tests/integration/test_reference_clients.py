"""Drop-in for the reference implementation's clients: the requests its demo producer, its
``duckmeshctl`` CLI and its web console send, replayed byte for byte in shape (headers,
missing bodies, nanosecond timestamps), each answered 2xx with the fields that client reads.
Intentional differences are listed in docs/coming-from-reference.md."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from duckmesh.api.context import AppContext
from duckmesh.cli.runtime import build_query_assist
from tests.conftest import QueryCtx, make_settings
from tests.fake_openai import FakeOpenAI, running_fake_openai

# The demo producer's table, declared with this server's typed columns (its own create call
# sends an untyped schema_json, which is not read) under the reference's field names.
DEMO_TABLE = {
    "table_name": "demo_events",
    "primary_key_cols": ["event_id"],
    "columns": [
        {"name": "event_id", "type": "int64", "nullable": False}, {"name": "user_id", "type": "string"},
        {"name": "session_id", "type": "string"}, {"name": "event_type", "type": "string"},
        {"name": "amount", "type": "float64"}, {"name": "currency", "type": "string"},
        {"name": "country", "type": "string"}, {"name": "device", "type": "string"},
        {"name": "source", "type": "string"}, {"name": "occurred_at", "type": "timestamp"},
    ],
}


def _api_key_headers(bearer: dict[str, str]) -> dict[str, str]:
    """The reference clients authenticate with X-API-Key (and send X-Tenant-ID, ignored when auth is on)."""
    return {"X-API-Key": bearer["Authorization"].removeprefix("Bearer "), "X-Tenant-ID": "acme",
            "Accept": "application/json"}


def _producer_record(sequence: int, moment: str) -> dict[str, Any]:
    """internal/demo/producer/generator.go NextRecord: Go's time.Time marshals as RFC3339Nano."""
    return {
        "idempotency_key": f"producer-1-{sequence:020d}", "op": "insert", "event_time": moment,
        "payload": {
            "event_id": sequence, "user_id": "user-0042", "session_id": "sess-00c0ffee", "event_type": "purchase",
            "amount": 123.45, "currency": "USD", "country": "DE", "device": "mobile",
            "source": "duckmesh-demo-producer", "occurred_at": moment,
        },
    }


@pytest.fixture
def fake_llm(app_context: AppContext) -> Iterator[FakeOpenAI]:
    with running_fake_openai() as fake:
        app_context.assist = build_query_assist(make_settings(
            ai_translate_enabled=True, ai_base_url=fake.url, ai_model="gpt-5", ai_api_key="sk-test"))
        yield fake


async def test_the_demo_producers_nanosecond_batch_is_accepted_and_stored_at_microseconds(ctx: QueryCtx) -> None:
    client, headers, coordinator = ctx
    assert (await client.post("/v1/tables", headers=headers, json=DEMO_TABLE)).status_code == 201
    producer = _api_key_headers(headers)

    exists = await client.get("/v1/tables/demo_events", headers=producer)  # its ensureTable check
    batch = await client.post("/v1/ingest/demo_events", headers={**producer, "Content-Type": "application/json"},
                              json={"records": [_producer_record(1, "2024-05-01T12:00:00.123456789Z"),
                                                _producer_record(2, "2024-05-01T12:00:00.9999999Z"),
                                                _producer_record(3, "2024-05-01T12:00:01Z")],
                                    "wait_for_visibility": False})

    assert exists.status_code == 200
    assert batch.status_code == 200, batch.text
    receipt = batch.json()
    assert (receipt["accepted_count"], receipt["duplicate_count"]) == (3, 0)
    assert receipt["max_visibility_token"] >= 3
    await coordinator.run_once()
    rows = (await client.post("/v1/query", headers=headers, json={
        "sql": "SELECT event_id, occurred_at FROM demo_events ORDER BY event_id"})).json()["rows"]
    assert rows == [[1, "2024-05-01T12:00:00.123456Z"], [2, "2024-05-01T12:00:00.999999Z"],
                    [3, "2024-05-01T12:00:01Z"]]


@pytest.mark.parametrize(("path", "fields"), [
    ("/v1/compaction/run", {"status", "summary"}),
    ("/v1/retention/run", {"status", "summary"}),
    ("/v1/integrity/run", {"status", "summary"}),
])
async def test_duckmeshctl_runs_maintenance_with_no_body_and_an_x_api_key(
    ctx: QueryCtx, path: str, fields: set[str]
) -> None:
    client, headers, coordinator = ctx
    assert (await client.post("/v1/tables", headers=headers, json=DEMO_TABLE)).status_code == 201
    assert (await client.post("/v1/ingest/demo_events", headers=headers, json={
        "records": [_producer_record(i, "2024-05-01T12:00:00.5Z") for i in range(3)]})).status_code == 200
    await coordinator.run_once()

    # internal/cli/duckmeshctl/runner.go doRequest: a nil body, no Content-Type
    response = await client.request("POST", path, headers=_api_key_headers(headers))

    assert response.status_code == 200, response.text
    assert fields <= set(response.json()) and response.json()["status"] == "completed"
    if path == "/v1/integrity/run":
        summary = response.json()["summary"]
        assert {"tenants_scanned", "snapshots_scanned", "referenced_files", "unique_files_checked",
                "missing_files", "size_mismatch_files", "operational_failures"} <= set(summary)
        assert summary["unique_files_checked"] == 1 and summary["missing_files"] == 0


async def test_duckmeshctl_lag_health_and_ready_answer_the_fields_it_prints(ctx: QueryCtx) -> None:
    client, headers, coordinator = ctx
    assert (await client.post("/v1/tables", headers=headers, json=DEMO_TABLE)).status_code == 201
    assert (await client.post("/v1/ingest/demo_events", headers=headers, json={
        "records": [_producer_record(i, "2024-05-01T12:00:00Z") for i in range(4)]})).status_code == 200
    ctl = _api_key_headers(headers)

    pending = await client.get("/v1/lag", headers=ctl)
    await coordinator.run_once()
    caught_up = await client.get("/v1/lag", headers=ctl)

    assert pending.status_code == caught_up.status_code == 200
    reference_fields = {"tenant_id", "accepted_events", "claimed_events", "pending_events", "oldest_pending_lag_ms",
                        "token_lag", "latest_visibility_token", "latest_snapshot_id", "latest_snapshot_time"}
    assert reference_fields <= set(pending.json())
    assert pending.json()["accepted_events"] == 4 and pending.json()["oldest_pending_lag_ms"] >= 0
    assert pending.json()["token_lag"] == 4
    assert (caught_up.json()["accepted_events"], caught_up.json()["oldest_pending_lag_ms"]) == (0, 0)
    assert caught_up.json()["latest_snapshot_id"] is not None and caught_up.json()["latest_visibility_token"] == 4
    assert (await client.get("/v1/health", headers=ctl)).json()["status"] == "ok"
    assert (await client.get("/v1/ready", headers=ctl)).json()["status"] == "ready"


async def test_the_consoles_schema_translate_and_query_calls_answer_what_it_reads(
    ctx: QueryCtx, fake_llm: FakeOpenAI
) -> None:
    client, headers, coordinator = ctx
    assert (await client.post("/v1/tables", headers=headers, json=DEMO_TABLE)).status_code == 201
    assert (await client.post("/v1/ingest/demo_events", headers=headers, json={
        "records": [_producer_record(i, "2024-05-01T12:00:00.000000001Z") for i in range(2)]})).status_code == 200
    await coordinator.run_once()
    console = _api_key_headers(headers)  # web/src/lib/api.ts request(): X-API-Key and X-Tenant-ID
    fake_llm.answer("SELECT country, count(*) AS n FROM demo_events GROUP BY country LIMIT 200")

    schema = await client.get("/v1/ui/schema", headers=console)
    translated = await client.post("/v1/query/translate", headers={**console, "Content-Type": "application/json"},
                                   json={"prompt": "purchases per country"})
    ran = await client.post("/v1/query", headers={**console, "Content-Type": "application/json"},
                            json={"sql": translated.json()["sql"], "row_limit": 2000})

    assert schema.status_code == 200, schema.text
    table = schema.json()["tables"][0]
    assert table["table_name"] == "demo_events"
    assert [c["name"] for c in table["columns"]][:2] == ["event_id", "user_id"]
    assert len(table["sample_rows"]) == 2 and len(table["sample_rows"][0]) == len(table["columns"])
    assert {"snapshot_id", "snapshot_time", "max_visibility_token"} <= set(schema.json())
    assert translated.status_code == 200, translated.text
    assert {k: translated.json()[k] for k in ("provider", "model")} == {"provider": "openai-compatible", "model": "gpt-5"}
    assert ran.status_code == 200, ran.text
    assert ran.json()["rows"] == [["DE", 2]]
    assert {"columns", "rows", "snapshot_id", "snapshot_time", "max_visibility_token", "stats"} <= set(ran.json())

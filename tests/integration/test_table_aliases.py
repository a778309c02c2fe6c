"""Table create/patch read the reference implementation's field names as aliases."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import KeyMaker

COLUMNS = [
    {"name": "event_id", "type": "int64", "nullable": False},
    {"name": "day", "type": "date"},
    {"name": "note", "type": "string"},
]


async def test_primary_key_cols_and_partition_spec_create_the_same_table_as_our_names(
    client: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    headers = await make_key()
    created = await client.post("/v1/tables", headers=headers, json={
        "table_name": "events", "columns": COLUMNS, "primary_key_cols": ["event_id"], "partition_spec": ["day"],
    })
    assert created.status_code == 201, created.text
    assert (created.json()["primary_key"], created.json()["partition_by"]) == (["event_id"], ["day"])

    upsert = await client.post("/v1/ingest/events", headers=headers, json={"records": [
        {"idempotency_key": "u1", "op": "upsert", "payload": {"event_id": 1, "day": "2024-05-01"}}]})
    assert upsert.status_code == 200, upsert.text  # a keyed table: upsert is allowed


@pytest.mark.parametrize("body", [
    {"primary_key": ["event_id"], "primary_key_cols": ["event_id"]},
    {"partition_by": ["day"], "partition_spec": ["day"]},
    {"primary_key": [], "primary_key_cols": ["event_id"]},
])
async def test_a_field_and_its_alias_together_are_refused(
    client: httpx.AsyncClient, make_key: KeyMaker, body: dict[str, Any]
) -> None:
    headers = await make_key()
    response = await client.post("/v1/tables", headers=headers, json={"table_name": "events", "columns": COLUMNS, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "VALIDATION_FAILED"
    assert "not both" in str(response.json()["context"])
    assert (await client.get("/v1/tables/events", headers=headers)).status_code == 404


async def test_the_reference_untyped_schema_json_and_partition_transform_are_refused_with_the_reason(
    client: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    headers = await make_key()
    untyped = await client.post("/v1/tables", headers=headers, json={
        "table_name": "events", "primary_key_cols": ["event_id"], "schema_json": {"event_id": "bigint"}})
    assert untyped.status_code == 400
    assert "columns" in str(untyped.json()["context"])
    transform = await client.post("/v1/tables", headers=headers, json={
        "table_name": "events", "columns": COLUMNS, "partition_spec": {"date": "day"}})
    assert transform.status_code == 400
    assert "list of column names" in str(transform.json()["context"])


async def test_patch_reads_the_aliases_and_refuses_a_key_or_partition_change(
    client: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    headers = await make_key()
    created = await client.post("/v1/tables", headers=headers, json={
        "table_name": "events", "columns": COLUMNS, "primary_key": ["event_id"], "partition_by": ["day"]})
    assert created.status_code == 201
    wider = [*COLUMNS, {"name": "extra", "type": "string"}]

    same = await client.patch("/v1/tables/events", headers=headers, json={
        "columns": wider, "primary_key_cols": ["event_id"], "partition_spec": ["day"]})
    assert same.status_code == 200, same.text
    assert same.json()["schema_version"] == 2

    for change in ({"primary_key_cols": ["note"]}, {"partition_spec": []}, {"primary_key": []}):
        refused = await client.patch("/v1/tables/events", headers=headers, json={"columns": wider, **change})
        assert refused.status_code == 409, (change, refused.text)
        assert refused.json()["error_code"] == "SCHEMA_INCOMPATIBLE"
    both = await client.patch("/v1/tables/events", headers=headers, json={
        "columns": wider, "primary_key": ["event_id"], "primary_key_cols": ["event_id"]})
    assert both.status_code == 400
    assert (await client.get("/v1/tables/events", headers=headers)).json()["schema_version"] == 2


async def test_dropping_a_table_answers_status_deleted_beside_our_fields(
    client: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    headers = await make_key()
    assert (await client.post("/v1/tables", headers=headers, json={"table_name": "events", "columns": COLUMNS})).status_code == 201
    dropped = await client.delete("/v1/tables/events", headers=headers)
    assert dropped.status_code == 200
    assert dropped.json()["status"] == "deleted"
    assert dropped.json()["dropped"] is True and dropped.json()["table_name"] == "events"

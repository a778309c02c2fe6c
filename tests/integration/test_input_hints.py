"""Shape mistakes people make get an error that says what to send instead, and nothing is stored."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import KeyMaker
from tests.helpers import EVENTS_COLUMNS, create_table, records


async def test_rows_sent_without_their_payload_wrapper_get_the_wrapping_hint(
    client: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    bare = [r["payload"] for r in records(0, 2)]
    unwrapped = await client.post("/v1/ingest/events", headers=headers, json={"records": bare})
    assert unwrapped.status_code == 400
    assert "wrap each row in payload" in unwrapped.json()["context"]["hint"]
    no_records = await client.post("/v1/ingest/events", headers=headers, json=bare[0])
    assert no_records.status_code == 400 and "wrap the rows" in no_records.json()["context"]["hint"]
    lag = await client.post("/v1/query", headers=headers, json={"sql": "SELECT count(*) FROM events"})
    assert lag.json()["rows"] == [[0]], "nothing stored"


@pytest.mark.parametrize(("field", "meant"), [
    ("primary_keys", "primary_key"), ("pk", "primary_key"), ("partitionBy", "partition_by"), ("column", "columns"),
])
async def test_a_misspelled_table_field_names_the_field_it_resembles(
    client: httpx.AsyncClient, make_key: KeyMaker, field: str, meant: str
) -> None:
    headers = await make_key()
    body = {"table_name": "t", "columns": EVENTS_COLUMNS, field: ["id"]}
    response = await client.post("/v1/tables", headers=headers, json=body)
    assert response.status_code == 400, response.text
    assert f"did you mean '{meant}'" in response.text
    assert (await client.get("/v1/tables/t", headers=headers)).status_code == 404


async def test_a_csv_backfill_is_refused_with_what_to_send_instead(client: httpx.AsyncClient, make_key: KeyMaker) -> None:
    headers = await make_key()
    await create_table(client, headers)
    response = await client.post("/v1/tables/events/backfill?backfill_id=csv-1",
                                 headers={**headers, "Content-Type": "text/csv"}, content=b"id,name\n1,a\n")
    assert response.status_code == 400
    body = response.json()
    assert body["error_code"] == "REQUEST_INVALID" and "CSV is not supported" in body["message"]
    assert "duckmesh ingest" in body["message"]

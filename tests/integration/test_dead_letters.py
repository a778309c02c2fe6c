from __future__ import annotations

import httpx
import orjson
import pytest

from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table, poison, records


async def test_a_poison_record_is_dead_lettered_listed_and_replayed_after_the_fix(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    broken = poison(monkeypatch, "name", "n1")  # the cause: a record the coordinator cannot materialize
    await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 4)})
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c", max_attempts=1))
    await coordinator.run_once()

    lag = (await client.get("/v1/lag", headers=headers)).json()
    assert lag["failed_events"] == 1 and lag["latest_visibility_token"] == 4, "the watermark is not blocked"
    letters = (await client.get("/v1/dead-letters", headers=headers)).json()["dead_letters"]
    assert [(d["visibility_token"], d["table_name"], d["idempotency_key"]) for d in letters] == [(2, "events", "k-1")]
    assert "materialize" in letters[0]["failure_reason"]

    assert orjson.loads(letters[0]["payload"]) == {"amount": "1.25", "at": 1714564800000000, "id": 1, "name": "n1"}
    broken[0] = False  # the fix
    replay = await client.post("/v1/dead-letters/replay", headers=headers, json={"event_ids": [letters[0]["event_id"]]})
    assert replay.status_code == 200, replay.text
    body = replay.json()
    assert body["replayed_count"] == 1 and body["max_visibility_token"] == 5, "a replayed event gets a new token"
    twice = (await client.post("/v1/dead-letters/replay", headers=headers,
                               json={"event_ids": [letters[0]["event_id"]]})).json()
    assert twice["replayed_count"] == 0 and twice["skipped_event_ids"] == [letters[0]["event_id"]]
    await coordinator.run_once()
    visible = (await client.post("/v1/query", headers=headers, json={
        "sql": "SELECT id FROM events ORDER BY id", "min_visibility_token": 5})).json()
    assert visible["rows"] == [[0], [1], [2], [3]]
    assert (await client.get("/v1/dead-letters", headers=headers)).json()["dead_letters"] == []
    lag = (await client.get("/v1/lag", headers=headers)).json()
    assert lag["failed_events"] == 0 and lag["latest_visibility_token"] == 5

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx

from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table, records


async def _published(client: httpx.AsyncClient, headers: dict[str, str], coordinator: Coordinator, start: int, count: int) -> None:
    await client.post("/v1/ingest/events", headers=headers, json={"records": records(start, count)})
    await coordinator.run_once()


async def _count(client: httpx.AsyncClient, headers: dict[str, str], **extra: Any) -> dict[str, Any]:
    response = await client.post("/v1/query", headers=headers, json={"sql": "SELECT count(*), sum(id) FROM events", **extra})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_snapshot_list_is_paged_newest_first_with_table_stats(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    for i in range(5):
        await _published(client, headers, coordinator, i * 10, 10)
    page = (await client.get("/v1/snapshots?limit=2", headers=headers)).json()
    ids = [s["snapshot_id"] for s in page["snapshots"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == 2 and page["next_before"] == ids[-1]
    newest = page["snapshots"][0]
    assert newest["kind"] == "ingest" and newest["max_visibility_token"] == 50 and newest["pinned"] is False
    assert newest["tables"]["events"]["files"] == 5 and newest["tables"]["events"]["rows"] == 50
    assert newest["tables"]["events"]["watermark"] == 50
    rest = (await client.get(f"/v1/snapshots?limit=10&before={page['next_before']}", headers=headers)).json()
    assert len(rest["snapshots"]) == 4 and all(s["snapshot_id"] < page["next_before"] for s in rest["snapshots"])
    assert rest["snapshots"][-1]["kind"] == "schema", "the oldest one pins the new table"
    assert rest["next_before"] is None
    one = (await client.get(f"/v1/snapshots/{ids[1]}", headers=headers)).json()
    assert len(one["files"]["events"]) == 4 and one["parent_snapshot_id"] is not None
    other = await make_key("other")
    assert (await client.get(f"/v1/snapshots/{ids[1]}", headers=other)).status_code == 404


async def test_restore_makes_latest_equal_the_old_snapshot_and_ingest_continues(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    await _published(client, headers, coordinator, 0, 10)
    target = await _count(client, headers)
    await _published(client, headers, coordinator, 10, 5)
    await _published(client, headers, coordinator, 15, 5)
    before_restore = await _count(client, headers)
    restored = await client.post("/v1/snapshots/restore", headers=headers, json={"snapshot_id": target["snapshot_id"]})
    assert restored.status_code == 201, restored.text
    body = restored.json()
    assert body["kind"] == "restore" and body["max_visibility_token"] == before_restore["max_visibility_token"] == 20
    latest = await _count(client, headers)
    at_target = await _count(client, headers, snapshot_id=target["snapshot_id"])
    assert latest["rows"] == at_target["rows"] == [[10, 45]]
    assert latest["max_visibility_token"] == 20, "the watermark does not go back"
    token = (await client.post("/v1/ingest/events", headers=headers, json={"records": records(100, 1)})).json()[
        "max_visibility_token"]
    assert token == 21
    await coordinator.run_once()
    after = await _count(client, headers, min_visibility_token=token)
    assert after["rows"][0][0] == 11
    # restoring forward again brings the "lost" files back
    again = await client.post("/v1/snapshots/restore", headers=headers, json={"snapshot_id": before_restore["snapshot_id"]})
    assert again.status_code == 201
    assert (await _count(client, headers))["rows"] == before_restore["rows"]


async def test_snapshot_time_resolves_at_exact_boundaries(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    await _published(client, headers, coordinator, 0, 1)
    await _published(client, headers, coordinator, 1, 1)
    listing = (await client.get("/v1/snapshots", headers=headers)).json()["snapshots"]
    second, first = listing[0], listing[1]
    created = listing[2]
    assert created["kind"] == "schema"
    first_at = datetime.fromisoformat(first["created_at"])
    second_at = datetime.fromisoformat(second["created_at"])

    async def at(moment: datetime) -> httpx.Response:
        return await client.post("/v1/query", headers=headers, json={"sql": "SELECT 1", "snapshot_time": moment.isoformat()})

    assert (await at(first_at)).json()["snapshot_id"] == first["snapshot_id"], "exactly at creation: that snapshot"
    assert (await at(second_at - timedelta(microseconds=1))).json()["snapshot_id"] == first["snapshot_id"]
    assert (await at(second_at)).json()["snapshot_id"] == second["snapshot_id"]
    assert (await at(first_at - timedelta(microseconds=1))).json()["snapshot_id"] == created["snapshot_id"]
    early = await at(datetime.fromisoformat(created["created_at"]) - timedelta(microseconds=1))
    assert early.status_code == 404 and early.json()["error_code"] == "SNAPSHOT_NOT_FOUND"


async def test_table_info_reports_latest_snapshot_stats(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    await _published(client, headers, coordinator, 0, 7)
    await _published(client, headers, coordinator, 7, 3)
    info = (await client.get("/v1/tables/events", headers=headers)).json()
    assert info["stats"]["rows"] == 10 and info["stats"]["files"] == 2 and info["stats"]["bytes"] > 0
    assert info["stats"]["physical_rows"] == 10 and info["stats"]["logical_rows"] == 10


async def test_keyed_table_stats_say_both_stored_and_visible_rows(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    headers = await make_key()
    await create_table(client, headers, "kv", primary_key=["id"])
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    for round_ in range(3):  # the same 10 keys three times, then 4 of them deleted
        await client.post("/v1/ingest/kv", headers=headers, json={"records": records(0, 10, prefix=f"r{round_}",
                                                                                       op="upsert")})
        await coordinator.run_once()
    deletes = [{"idempotency_key": f"d{i}", "op": "delete", "payload": {"id": i}} for i in range(4)]
    await client.post("/v1/ingest/kv", headers=headers, json={"records": deletes})
    await coordinator.run_once()
    info = (await client.get("/v1/tables/kv", headers=headers)).json()
    assert info["stats"]["physical_rows"] == 34 and info["stats"]["rows"] == 34
    assert info["stats"]["logical_rows"] == 6, "what a query sees: live keys after the merge"
    listed = (await client.get("/v1/tables", headers=headers)).json()["tables"]
    assert [t["stats"]["logical_rows"] for t in listed] == [6]


async def test_restore_dry_run_lists_what_would_change_and_publishes_nothing(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> None:
    headers = await make_key()
    await create_table(client, headers)
    await create_table(client, headers, "kv", primary_key=["id"])
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    await _published(client, headers, coordinator, 0, 10)
    target = (await _count(client, headers))["snapshot_id"]
    await _published(client, headers, coordinator, 10, 5)
    for round_ in range(2):
        await client.post("/v1/ingest/kv", headers=headers, json={"records": records(0, 3, prefix=f"r{round_}",
                                                                                       op="upsert")})
        await coordinator.run_once()
    await create_table(client, headers, "later")
    head_before = (await client.get("/v1/snapshots?limit=1", headers=headers)).json()["snapshots"][0]["snapshot_id"]

    dry = await client.post("/v1/snapshots/restore", headers=headers, json={"snapshot_id": target, "dry_run": True})
    assert dry.status_code == 200, dry.text
    tables = {t["table_name"]: t for t in dry.json()["tables"]}
    assert tables["events"] | {} == {
        "table_name": "events", "changed": True, "files_now": 2, "files_after": 1, "files_removed": 1,
        "files_restored": 0, "rows_now": 15, "rows_after": 10, "stored_rows_now": 15, "stored_rows_after": 10}
    assert tables["kv"]["changed"] and tables["kv"]["rows_now"] == 3 and tables["kv"]["stored_rows_now"] == 6
    assert tables["kv"]["rows_after"] == 0 and tables["kv"]["files_after"] == 0
    assert tables["later"]["changed"] is False and tables["later"]["rows_now"] is None
    head_after = (await client.get("/v1/snapshots?limit=1", headers=headers)).json()["snapshots"][0]["snapshot_id"]
    assert head_after == head_before, "a dry run publishes nothing"
    gone = await client.post("/v1/snapshots/restore", headers=headers, json={"snapshot_id": 10**9, "dry_run": True})
    assert gone.status_code == 404

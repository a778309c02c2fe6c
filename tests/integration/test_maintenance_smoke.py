from __future__ import annotations

from datetime import timedelta

import httpx

from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table


async def test_compaction_then_retention_then_integrity_over_the_api(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    app_context: object,
) -> None:
    headers = await make_key()
    await create_table(client, headers, "kv", columns=[
        {"name": "id", "type": "int64", "nullable": False}, {"name": "v", "type": "string"}], primary_key=["id"])
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    for round_ in range(10):
        batch = [{"idempotency_key": f"{round_}-{i}", "op": "upsert", "payload": {"id": i, "v": f"r{round_}"}}
                 for i in range(5)]
        await client.post("/v1/ingest/kv", headers=headers, json={"records": batch})
        await coordinator.run_once()
    before = (await client.post("/v1/query", headers=headers, json={"sql": "SELECT id, v FROM kv ORDER BY id"})).json()
    assert before["stats"]["scanned_files"] == 10
    dry = (await client.post("/v1/compaction/run", headers=headers, json={"dry_run": True})).json()
    assert dry["summary"]["tables"]["kv"]["status"] == "planned"
    done = await client.post("/v1/compaction/run", headers=headers, json={})
    assert done.status_code == 200, done.text
    assert done.json()["summary"]["tables"]["kv"]["status"] == "completed"
    after = (await client.post("/v1/query", headers=headers, json={"sql": "SELECT id, v FROM kv ORDER BY id"})).json()
    assert after["rows"] == before["rows"] and after["stats"]["scanned_files"] == 1
    assert after["max_visibility_token"] == before["max_visibility_token"]
    old = (await client.post("/v1/query", headers=headers, json={
        "sql": "SELECT id, v FROM kv ORDER BY id", "snapshot_id": before["snapshot_id"]})).json()
    assert old["rows"] == before["rows"]

    app_context.maintenance.retention.policy = app_context.maintenance.retention.policy.__class__(  # type: ignore[attr-defined]
        keep_snapshots=1, snapshot_min_age=timedelta(0), gc_safety_age=timedelta(0), idempotency_window=timedelta(0))
    gc = await client.post("/v1/retention/run", headers=headers, json={})
    assert gc.status_code == 200, gc.text
    summary = gc.json()["summary"]
    assert summary["snapshots_expired"] == 11 and summary["files_deleted"] == 10 and summary["events_deleted"] == 50
    gone = await client.post("/v1/query", headers=headers, json={"sql": "SELECT 1", "snapshot_id": before["snapshot_id"]})
    assert gone.status_code == 404
    ok = await client.post("/v1/integrity/run", headers=headers, json={"deep": True})
    assert ok.status_code == 200, ok.text
    assert ok.json()["summary"]["files_checked"] == 1

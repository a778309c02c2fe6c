"""Integrity validation (MAINTENANCE.md "Integrity validation"): missing, truncated and
corrupted files are found and listed exactly in a 409; orphans are reported, not failures;
every run leaves an ``integrity_run`` row."""

from __future__ import annotations

from typing import Any

import httpx

from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog import maintenance
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.domain import TenantId
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table, records


async def tenant_with_files(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
    tables: tuple[str, ...] = ("events",), rounds: int = 4,
) -> tuple[dict[str, str], TenantId, list[dict[str, Any]]]:
    """A tenant whose tables got ``rounds`` snapshots; returns its files in file_id order."""
    headers = await make_key()
    tenant_id = TenantId(0)
    for name in tables:
        tenant_id = TenantId((await create_table(client, headers, name))["tenant_id"])
    coordinator = Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
    for round_ in range(rounds):
        for name in tables:
            response = await client.post(f"/v1/ingest/{name}", headers=headers,
                                         json={"records": records(round_ * 10, 10, prefix=f"r{round_}")})
            assert response.status_code in (200, 202), response.text
        await coordinator.run_once()
    async with pool.connection() as conn:
        files = await maintenance.retained_files(conn, tenant_id)
    assert len(files) == rounds * len(tables)
    return headers, tenant_id, files


async def integrity(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> httpx.Response:
    return await client.post("/v1/integrity/run", headers=headers, json=body)


async def runs(pool: CatalogPool, tenant_id: TenantId) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT status, deep, summary, finished_at FROM integrity_run"
                                 " WHERE tenant_id = %s ORDER BY run_id", (tenant_id,))
        return list(await cur.fetchall())


def bad(data_file: dict[str, Any], problem: str) -> dict[str, Any]:
    return {"file_id": data_file["file_id"], "path": data_file["path"], "problem": problem}


async def test_a_clean_tenant_passes_shallow_and_deep_checks_and_each_run_is_recorded(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    headers, tenant_id, files = await tenant_with_files(client, make_key, pool, bus, store)

    shallow, deep = await integrity(client, headers), await integrity(client, headers, deep=True)

    for response in (shallow, deep):
        assert response.status_code == 200, response.text
        summary = response.json()["summary"]
        assert response.json()["status"] == "completed"
        assert summary["files_checked"] == len(files)
        assert summary["bad_files"] == summary["orphans"] == summary["dangling_rows"] == []
    assert [(r["status"], r["deep"]) for r in await runs(pool, tenant_id)] == [("completed", False), ("completed", True)]
    assert all(r["finished_at"] is not None and r["summary"]["files_checked"] == len(files)
               for r in await runs(pool, tenant_id))


async def test_orphans_are_reported_but_are_not_failures(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    headers, tenant_id, files = await tenant_with_files(client, make_key, pool, bus, store, rounds=2)
    orphan = f"{tenant_id}/{files[0]['table_id']}/date=2024-01-01/part-crashed-0000.parquet"
    store.put(orphan, b"left behind by a crashed coordinator")

    response = await integrity(client, headers, deep=True)

    assert response.status_code == 200, response.text
    assert response.json()["summary"]["orphans"] == [orphan]
    assert response.json()["summary"]["bad_files"] == []
    assert [r["status"] for r in await runs(pool, tenant_id)] == ["completed"]


async def test_missing_truncated_and_corrupted_files_are_listed_exactly_in_a_409(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    headers, tenant_id, files = await tenant_with_files(client, make_key, pool, bus, store)
    missing, truncated, corrupted, healthy = files
    store.delete(missing["path"])
    original = store.get(truncated["path"])
    store.put(truncated["path"], original[:-10])
    data = bytearray(store.get(corrupted["path"]))
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])  # same size, other bytes
    store.put(corrupted["path"], bytes(data))
    size_problem = f"size {len(original) - 10} != catalog {truncated['file_size_bytes']}"

    shallow = await integrity(client, headers)

    assert shallow.status_code == 409, shallow.text
    body = shallow.json()
    assert body["error_code"] == "INTEGRITY_CHECK_FAILED" and body["retryable"] is False
    assert body["context"]["bad_files"] == [bad(missing, "missing"), bad(truncated, size_problem)]
    assert body["context"]["files_checked"] == len(files) and body["context"]["orphans"] == []

    deep = await integrity(client, headers, deep=True)

    assert deep.status_code == 409, deep.text
    assert deep.json()["context"]["bad_files"] == [
        bad(missing, "missing"), bad(truncated, size_problem), bad(corrupted, "content hash mismatch")]
    assert healthy["path"] not in {b["path"] for b in deep.json()["context"]["bad_files"]}
    recorded = await runs(pool, tenant_id)
    assert [(r["status"], r["deep"]) for r in recorded] == [("failed", False), ("failed", True)]
    assert recorded[1]["summary"]["bad_files"] == deep.json()["context"]["bad_files"]
    assert deep.json()["context"]["run_id"] > shallow.json()["context"]["run_id"]


async def test_a_deep_check_finds_a_row_count_the_catalog_gets_wrong(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    headers, _, files = await tenant_with_files(client, make_key, pool, bus, store, rounds=2)
    wrong = files[1]
    async with pool.connection() as conn:
        await conn.execute("UPDATE data_file SET record_count = record_count + 1 WHERE file_id = %s",
                           (wrong["file_id"],))

    assert (await integrity(client, headers)).status_code == 200, "sizes still match"
    deep = await integrity(client, headers, deep=True)

    assert deep.status_code == 409, deep.text
    assert deep.json()["context"]["bad_files"] == [
        bad(wrong, f"row count {wrong['record_count']} != catalog {wrong['record_count'] + 1}")]


async def test_catalog_rows_naming_a_missing_table_fail_the_check(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    headers, _, files = await tenant_with_files(client, make_key, pool, bus, store, rounds=2)
    async with pool.connection() as conn:
        await conn.execute("UPDATE data_file SET table_id = 987654 WHERE file_id = %s", (files[0]["file_id"],))

    response = await integrity(client, headers)

    assert response.status_code == 409, response.text
    assert response.json()["context"]["dangling_rows"] == [{"file_id": files[0]["file_id"], "path": files[0]["path"]}]
    assert response.json()["context"]["bad_files"] == []


async def test_a_table_scoped_check_looks_only_at_that_tables_files(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    headers, _, files = await tenant_with_files(client, make_key, pool, bus, store, tables=("a", "b"), rounds=2)
    broken = files[0]
    store.delete(broken["path"])
    table_of = {f["table_id"] for f in files if f["table_id"] != broken["table_id"]}
    assert len(table_of) == 1
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT table_name FROM table_def WHERE table_id = %s", (broken["table_id"],))
        broken_name = (await cur.fetchone() or {})["table_name"]
    other_name = "b" if broken_name == "a" else "a"

    other = await integrity(client, headers, table=other_name)
    same = await integrity(client, headers, table=broken_name)

    assert other.status_code == 200 and other.json()["summary"]["files_checked"] == 2, other.text
    assert same.status_code == 409 and same.json()["context"]["bad_files"] == [bad(broken, "missing")]


async def test_the_summary_carries_the_reference_implementations_counters_beside_ours(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore,
) -> None:
    headers, _, files = await tenant_with_files(client, make_key, pool, bus, store)

    clean = await integrity(client, headers)

    assert clean.status_code == 200, clean.text
    summary = clean.json()["summary"]
    # the table's creation (no file) and four snapshots each appending one file: 0 + 1 + 2 + 3 + 4 files
    assert {key: summary[key] for key in (
        "tenants_scanned", "snapshots_scanned", "referenced_files", "unique_files_checked", "missing_files",
        "size_mismatch_files", "operational_failures")} == {
        "tenants_scanned": 1, "snapshots_scanned": 5, "referenced_files": 10, "unique_files_checked": 4,
        "missing_files": 0, "size_mismatch_files": 0, "operational_failures": 0}
    assert summary["files_checked"] == len(files)

    store.delete(files[0]["path"])
    store.put(files[1]["path"], store.get(files[1]["path"])[:-1])
    failed = await integrity(client, headers)

    assert failed.status_code == 409
    context = failed.json()["context"]
    assert (context["missing_files"], context["size_mismatch_files"], context["operational_failures"]) == (1, 1, 0)

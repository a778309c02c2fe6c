"""An honest physical layout: files are written per date and per value of the table's partition
columns, compaction never mixes partitions, merges a table's small files across dates when no
single date has enough of them, and says why when it does nothing."""

from __future__ import annotations

from typing import Any

import httpx

from duckmesh.catalog import snapshots, tables
from duckmesh.catalog.db import CatalogPool
from duckmesh.domain import TenantId
from duckmesh.maintenance.compaction import CompactionPolicy, Compactor
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import QueryCtx
from tests.helpers import create_table
from tests.helpers import query_ok as query

SALES = [{"name": "id", "type": "int64", "nullable": False}, {"name": "country", "type": "string"},
         {"name": "amount", "type": "int64"}, {"name": "day", "type": "date"}]


async def _live(pool: CatalogPool, tenant_id: int, name: str) -> list[snapshots.DataFile]:
    async with pool.connection() as conn:
        table = await tables.get_table(conn, TenantId(tenant_id), name)
        return await snapshots.current_files(conn, TenantId(tenant_id), table.table_id)


async def _tenant(pool: CatalogPool) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT tenant_id FROM table_def LIMIT 1")).fetchone()
    assert row is not None
    return int(row["tenant_id"])


async def _ingest(client: httpx.AsyncClient, headers: dict[str, str], table: str, rows: list[dict[str, Any]],
                  event_time: str | None = None, prefix: str = "k") -> int:
    body = {"records": [{"idempotency_key": f"{prefix}-{i}", "payload": row,
                         **({"event_time": event_time} if event_time else {})} for i, row in enumerate(rows)]}
    response = await client.post(f"/v1/ingest/{table}", headers=headers, json=body)
    assert response.status_code == 200, response.text
    return int(response.json()["max_visibility_token"])


async def test_files_are_split_by_partition_values_and_compaction_keeps_them_apart(
    ctx: QueryCtx, pool: CatalogPool, store: RetryingObjectStore,
) -> None:
    client, headers, coordinator = ctx
    created = await create_table(client, headers, "sales", columns=SALES)
    assert created["partition_by"] == []
    response = await client.post("/v1/tables", headers=headers, json={
        "table_name": "by_country", "columns": SALES, "partition_by": ["country"]})
    assert response.status_code == 201, response.text
    token = 0
    for round_ in range(3):
        rows = [{"id": round_ * 100 + i, "country": ["de", "fr", None][i % 3], "amount": i} for i in range(30)]
        token = await _ingest(client, headers, "by_country", rows, prefix=f"r{round_}")
        await coordinator.run_once()
    tenant = await _tenant(pool)
    files = await _live(pool, tenant, "by_country")
    assert sorted(str(f.partition) for f in files) == sorted(
        [str({"country": c}) for c in ("de", "fr", None)] * 3), "one file per partition value per batch"
    before = await query(client, headers, "SELECT country, count(*), sum(amount) FROM by_country"
                         " GROUP BY ALL ORDER BY ALL", min_visibility_token=token)

    result = await Compactor(pool, store, CompactionPolicy(min_input_files=2), "test").compact_table(
        TenantId(tenant), await _table(pool, tenant, "by_country"))
    assert result["status"] == "completed" and result["input_files"] == 3, result
    files = await _live(pool, tenant, "by_country")
    merged = [f for f in files if "part-c" in f.path]
    assert len(merged) == 1 and len(files) == 7, "three files of one country became one; the others stay"
    assert all(f.partition == merged[0].partition for f in merged)
    after = await query(client, headers, "SELECT country, count(*), sum(amount) FROM by_country"
                        " GROUP BY ALL ORDER BY ALL", min_visibility_token=token)
    assert after["rows"] == before["rows"]


async def _table(pool: CatalogPool, tenant: int, name: str) -> tables.TableDef:
    async with pool.connection() as conn:
        return await tables.get_table(conn, TenantId(tenant), name)


async def test_a_month_of_one_small_file_per_day_is_merged_across_dates(
    ctx: QueryCtx, pool: CatalogPool, store: RetryingObjectStore,
) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers, "sales", columns=SALES)
    token = 0
    for day in range(1, 29):
        rows = [{"id": day * 10 + i, "country": "de", "amount": i} for i in range(3)]
        token = await _ingest(client, headers, "sales", rows, event_time=f"2026-02-{day:02d}T12:00:00Z",
                              prefix=f"d{day}")
    await coordinator.run_once()  # one claim, 28 dates: 28 files
    tenant = await _tenant(pool)
    assert len(await _live(pool, tenant, "sales")) == 28
    before = await query(client, headers, "SELECT count(*), sum(amount), min(id), max(id) FROM sales",
                         min_visibility_token=token)

    compactor = Compactor(pool, store, CompactionPolicy(min_input_files=8), "test")
    result = await compactor.compact_table(TenantId(tenant), await _table(pool, tenant, "sales"))
    assert result["status"] == "completed" and result["across_dates"] and result["input_files"] == 28, result
    files = await _live(pool, tenant, "sales")
    assert len(files) == 1 and "/date=2026-02-01/" in files[0].path, "placed under the earliest date"
    after = await query(client, headers, "SELECT count(*), sum(amount), min(id), max(id) FROM sales",
                        min_visibility_token=token)
    assert after["rows"] == before["rows"]

    again = await compactor.compact_table(TenantId(tenant), await _table(pool, tenant, "sales"))
    assert again["status"] == "nothing_to_do"
    assert "1 small files, fewer than the minimum of 8" in again["reason"], again


async def test_compaction_says_why_it_did_nothing(ctx: QueryCtx, pool: CatalogPool, store: RetryingObjectStore) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers, "sales", columns=SALES)
    compactor = Compactor(pool, store, CompactionPolicy(min_input_files=3), "test")
    tenant = await _tenant(pool)
    empty = await compactor.compact_table(TenantId(tenant), await _table(pool, tenant, "sales"))
    assert empty["reason"] == "the table has no data files"
    for round_ in range(2):
        await _ingest(client, headers, "sales", [{"id": round_, "amount": 1}], prefix=f"r{round_}")
        await coordinator.run_once()
    few = await compactor.compact_table(TenantId(tenant), await _table(pool, tenant, "sales"))
    assert few["status"] == "nothing_to_do" and few["small_files"] == 2 and "minimum of 3" in few["reason"], few
    well_sized = Compactor(pool, store, CompactionPolicy(min_input_files=2, target_file_bytes=2), "test")
    big = await well_sized.compact_table(TenantId(tenant), await _table(pool, tenant, "sales"))
    assert "well-sized" in big["reason"], big
    over_api = await client.post("/v1/compaction/run", headers=headers, json={"table": "sales"})
    assert "reason" in over_api.json()["summary"]["tables"]["sales"], over_api.text


async def test_partition_columns_are_checked_when_a_table_is_created(ctx: QueryCtx) -> None:
    client, headers, _ = ctx

    async def create(**definition: Any) -> httpx.Response:
        return await client.post("/v1/tables", headers=headers, json={"table_name": "t", **definition})

    float_column = await create(columns=[{"name": "x", "type": "float64"}], partition_by=["x"])
    assert float_column.status_code == 400 and "partition by" in float_column.json()["message"]
    timestamp = await create(columns=[{"name": "at", "type": "timestamp"}], partition_by=["at"])
    assert timestamp.status_code == 400 and "date column" in timestamp.json()["message"]
    twice = await create(columns=SALES, partition_by=["country", "country"])
    assert twice.status_code == 400
    keyed = await create(columns=SALES, primary_key=["country", "id"], partition_by=["country"])
    assert keyed.status_code == 201, keyed.text
    dropped = await client.patch("/v1/tables/t", headers=headers, json={
        "columns": [c for c in SALES if c["name"] != "amount"], "compatibility_mode": "none"})
    assert dropped.status_code == 200, dropped.text
    unkeyed = await client.post("/v1/tables", headers=headers, json={
        "table_name": "u", "columns": SALES, "partition_by": ["country"]})
    assert unkeyed.status_code == 201, unkeyed.text
    drop_partition = await client.patch("/v1/tables/u", headers=headers, json={
        "columns": [c for c in SALES if c["name"] != "country"], "compatibility_mode": "none"})
    assert drop_partition.status_code in (400, 409), drop_partition.text
    assert "partition column 'country' cannot be dropped" in drop_partition.json()["message"]


async def test_a_query_that_fixes_the_partition_reads_only_its_files_and_answers_the_same(ctx: QueryCtx) -> None:
    client, headers, coordinator = ctx
    for name, key in (("plain", []), ("keyed", ["country", "id"])):
        response = await client.post("/v1/tables", headers=headers, json={
            "table_name": name, "columns": SALES, "partition_by": ["country"], "primary_key": key})
        assert response.status_code == 201, response.text
    token = 0
    for round_ in range(2):
        for name in ("plain", "keyed"):
            rows = [{"id": i, "country": ["de", "fr", "it"][i % 3], "amount": round_ * 10 + i} for i in range(12)]
            body = {"records": [{"idempotency_key": f"{round_}-{i}", "op": "upsert" if name == "keyed" else "insert",
                                 "payload": row} for i, row in enumerate(rows)]}
            response = await client.post(f"/v1/ingest/{name}", headers=headers, json=body)
            token = response.json()["max_visibility_token"]
        await coordinator.run_once()

    for name in ("plain", "keyed"):
        everything = await query(client, headers, f"SELECT country, id, amount FROM {name} ORDER BY ALL",
                                 min_visibility_token=token)
        assert everything["stats"]["scanned_files"] == 6
        german = await query(client, headers, f"SELECT country, id, amount FROM {name} WHERE country = 'de'"
                             " ORDER BY ALL")
        assert german["stats"]["scanned_files"] == 2, "only the files of country de"
        assert german["rows"] == [r for r in everything["rows"] if r[0] == "de"]
        two = await query(client, headers, f"SELECT count(*) FROM {name} WHERE country IN ('de', 'it') AND id > 2")
        assert two["stats"]["scanned_files"] == 4
        assert two["rows"] == [[sum(1 for r in everything["rows"] if r[0] in ("de", "it") and r[1] > 2)]]
        either = await query(client, headers, f"SELECT count(*) FROM {name} WHERE country = 'de' OR id = 1")
        assert either["stats"]["scanned_files"] == 6, "an OR fixes nothing"
    keyed = await query(client, headers, "SELECT sum(amount) FROM keyed WHERE country = 'fr'")
    assert keyed["rows"] == [[sum(10 + i for i in range(12) if i % 3 == 1)]], "the latest version per key"


async def test_the_event_time_a_writer_sent_is_queryable_by_name(ctx: QueryCtx) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers, "sales", columns=SALES)
    token = await _ingest(client, headers, "sales", [{"id": 1}, {"id": 2}],
                          event_time="2026-03-04T05:06:07.123456Z")
    await coordinator.run_once()
    answer = await query(client, headers, "SELECT id, _dm_event_time FROM sales ORDER BY id",
                         min_visibility_token=token)
    assert answer["rows"] == [[1, "2026-03-04T05:06:07.123456Z"], [2, "2026-03-04T05:06:07.123456Z"]]
    plain = await query(client, headers, "SELECT * FROM sales ORDER BY id")
    assert [c["name"] for c in plain["columns"]] == ["id", "country", "amount", "day"], "never in SELECT * alone"


async def test_a_backfill_is_split_by_partition_values_in_one_snapshot(ctx: QueryCtx, pool: CatalogPool) -> None:
    client, headers, _ = ctx
    response = await client.post("/v1/tables", headers=headers, json={
        "table_name": "sales", "columns": SALES, "partition_by": ["country"]})
    assert response.status_code == 201, response.text
    lines = "\n".join(f'{{"id": {i}, "country": "{["de", "fr"][i % 2]}", "amount": {i}}}' for i in range(40))
    loaded = await client.post("/v1/tables/sales/backfill?backfill_id=b1", content=lines.encode(),
                               headers={**headers, "Content-Type": "application/x-ndjson"})
    assert loaded.status_code == 200, loaded.text
    files = await _live(pool, await _tenant(pool), "sales")
    assert sorted(f.partition["country"] for f in files) == ["de", "fr"] and sum(f.record_count for f in files) == 40
    french = await query(client, headers, "SELECT count(*), sum(amount) FROM sales WHERE country = 'fr'",
                         min_visibility_token=loaded.json()["max_visibility_token"])
    assert french["rows"] == [[20, sum(range(1, 40, 2))]] and french["stats"]["scanned_files"] == 1


# Each query against the same query made unprunable (an OR that is never true fixes nothing): the
# answers must be equal, whatever form the literals take and whatever the joins pair.
SAME_ANSWER = [
    "SELECT id FROM s WHERE day = DATE '2026-01-01' AND day IN ('2026-01-01', '2026-01-02') {OR} ORDER BY id",
    "SELECT id FROM s WHERE shop IN (1, 2) AND shop = '1' {OR} ORDER BY id",
    "SELECT id FROM s WHERE price = '1.505' {OR} ORDER BY id",
    "SELECT id FROM s WHERE price = 1.51 {OR} ORDER BY id",
    "SELECT t.tid, q.id FROM trades t ASOF JOIN s q ON t.at >= q.shop WHERE q.shop = 1 {OR} ORDER BY ALL",
    "SELECT e.id FROM s AS e, trades AS s WHERE s.tid = 100 {OR} ORDER BY ALL",
    "SELECT i FROM s AS t(i, d, sh, p) WHERE sh = 2 {OR} ORDER BY ALL",
    "SELECT count(*) FROM s USING SAMPLE 1 ROWS (reservoir, 1) WHERE shop = 1 {OR}",
]


async def test_skipping_files_never_changes_an_answer(ctx: QueryCtx) -> None:
    client, headers, coordinator = ctx
    response = await client.post("/v1/tables", headers=headers, json={"table_name": "s", "columns": [
        {"name": "id", "type": "int64", "nullable": False}, {"name": "day", "type": "date"},
        {"name": "shop", "type": "int64"}, {"name": "price", "type": "decimal(10,2)"}],
        "partition_by": ["day", "shop", "price"]})
    assert response.status_code == 201, response.text
    await create_table(client, headers, "trades", columns=[{"name": "tid", "type": "int64"}, {"name": "at", "type": "int64"}])
    await _ingest(client, headers, "s", [{"id": 1, "day": "2026-01-01", "shop": 1, "price": "1.51"},
                                         {"id": 2, "day": "2026-01-02", "shop": 2, "price": "1.50"},
                                         {"id": 3, "day": "2026-01-02", "shop": 1, "price": "1.50"}])
    token = await _ingest(client, headers, "trades", [{"tid": 100, "at": 3}])
    await coordinator.run_once()
    whole = await query(client, headers, "SELECT count(*) FROM s", min_visibility_token=token)
    assert whole["stats"]["scanned_files"] == 3 and whole["rows"] == [[3]]
    for sql in SAME_ANSWER:
        pruned = await query(client, headers, sql.format(OR=""))
        unpruned = await query(client, headers, sql.format(OR="OR id < 0" if "FROM s WHERE" in sql else "OR false"))
        assert pruned["rows"] == unpruned["rows"], sql
    skipping = await query(client, headers, "SELECT id FROM s WHERE price = 1.51 AND day = '2026-01-01'")
    assert skipping["rows"] == [[1]] and skipping["stats"]["scanned_files"] == 1, "plain forms still skip files"

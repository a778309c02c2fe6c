"""The SQL sandbox holds over the real HTTP API, and DuckDB itself contains hostile SQL that gets
past the parser (defence in depth): no other tenant's files, no host files, no settings changes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from duckmesh.api.context import AppContext
from duckmesh.catalog import tenants
from duckmesh.catalog.db import CatalogPool
from duckmesh.domain import TenantId
from duckmesh.errors import QueryInvalid, SqlNotAllowed
from duckmesh.query.engine import QueryEngine, _TenantDatabase
from duckmesh.storage.cache import FileCache
from duckmesh.storage.local import LocalObjectStore
from tests.conftest import KeyMaker
from tests.conftest import QueryCtx as Ctx
from tests.helpers import create_table, records
from tests.helpers import post_query as q

REFUSED_CODES = {"SQL_NOT_ALLOWED", "QUERY_INVALID", "TABLE_NOT_FOUND"}



async def assert_serving(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    # More queries than the engine has cursors per tenant, so every pooled cursor is exercised.
    for n in range(6):
        response = await q(client, headers, f"SELECT {n} + 1 AS x")
        assert response.status_code == 200, response.text
        assert response.json()["rows"] == [[n + 1]]


# (a) ------------------------------------------------------------------------------------------

REFUSED_OVER_HTTP = [
    "SELECT * FROM read_parquet('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM glob('/*')",
    "SELECT getenv('HOME')",
    "SELECT * FROM duckdb_settings()",
    "SELECT current_setting('allowed_directories')",
    "SELECT * FROM query('SELECT 1')",
    "COPY events TO '/tmp/events.csv'",
    "ATTACH '/tmp/x.duckdb' AS x",
    "INSTALL httpfs",
    "SET enable_external_access = true",
    "PRAGMA database_list",
    "SELECT 1; DROP TABLE events",
    "SELECT 1 --\n; ATTACH ':memory:' AS m",
    "SELECT * FROM events, read_parquet('/x.parquet')",
    "WITH x AS (FROM read_csv('/etc/passwd')) SELECT * FROM x",
    "SELECT * FROM main.events",
    "SELECT * FROM information_schema.tables",
    "CREATE MACRO m(a) AS a",
    "DESCRIBE events",
    "EXPORT DATABASE '/tmp/dump'",
    "SELEC * FORM events",
]


async def test_hostile_sql_over_http_is_refused_and_the_process_keeps_serving(ctx: Ctx) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers)
    await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 3)})
    await coordinator.run_once()
    for sql in REFUSED_OVER_HTTP:
        response = await q(client, headers, sql)
        assert response.status_code == 400, (sql, response.text)
        body = response.json()
        assert body["error_code"] in REFUSED_CODES, (sql, body)
        assert body["retryable"] is False and body["message"]
        normal = await q(client, headers, "SELECT count(*) FROM events")
        assert normal.status_code == 200 and normal.json()["rows"] == [[3]], (sql, normal.text)
    await assert_serving(client, headers)


async def test_catalog_views_are_not_reachable_through_an_out_of_scope_cte_name(ctx: Ctx) -> None:
    client, headers, _ = ctx
    sql = ("SELECT name, setting FROM (WITH pg_settings AS (SELECT 1) SELECT 1) x, pg_settings"
           " WHERE name = 'allowed_directories'")
    response = await q(client, headers, sql)
    assert response.status_code == 400, response.text  # today: 200 with the server's data directory


async def test_time_travel_is_exact_even_when_a_cte_reuses_a_table_name(ctx: Ctx) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers)
    await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 2)})
    await coordinator.run_once()
    first = (await q(client, headers, "SELECT count(*) FROM events")).json()["snapshot_id"]
    await client.post("/v1/ingest/events", headers=headers, json={"records": records(2, 3)})
    await coordinator.run_once()
    for _ in range(6):  # every pooled cursor now holds `events` bound to the latest snapshot
        assert (await q(client, headers, "SELECT count(*) FROM events")).json()["rows"] == [[5]]
    sql = "SELECT count(*) FROM (WITH events AS (SELECT 1 AS id) SELECT * FROM events) a, events b"
    response = await q(client, headers, sql, snapshot_id=first)
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [[2]]  # today: 5, the rows of a later snapshot


# (b) ------------------------------------------------------------------------------------------

OWN = "1/7/date=2024-05-01/part-0.parquet"
OTHER = "2/7/date=2024-05-01/part-0.parquet"


@dataclasses.dataclass
class Contained:
    engine: QueryEngine
    objects: Path
    cwd: Path

    def run(self, sql: str) -> list[dict[str, Any]]:
        result = self.engine.run(TenantId(1), tables=[], sql=sql, params=None, row_limit=100, timeout=5)
        return list(result.table.to_pylist())


@pytest.fixture
def contained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Contained:
    objects = tmp_path / "objects"
    for tenant, secret in ((1, "mine"), (2, "theirs")):
        path = objects / (OWN if tenant == 1 else OTHER)
        path.parent.mkdir(parents=True)
        pq.write_table(pa.table({"id": [tenant], "secret": [secret]}), path)
    (tmp_path / "etc.csv").write_text("user,password\nroot,hunter2\n")
    # DuckDB resolves its default temp directory against the working directory: keep it in tmp.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cache = FileCache(LocalObjectStore(objects.as_uri()), tmp_path / "cache", 10**9)
    return Contained(QueryEngine(cache, memory_limit="256MB", threads=1), objects, cwd)


def test_the_engine_refuses_file_readers_even_over_the_tenants_own_files(contained: Contained) -> None:
    own = contained.objects / OWN
    for sql in (f"SELECT id, secret FROM read_parquet('{own}')", f"SELECT file FROM glob('{contained.objects}/1/*')"):
        with pytest.raises(SqlNotAllowed):
            contained.run(sql)


def raw_database(contained: Contained) -> Any:
    """A tenant database exactly as the engine configures it, to run SQL that skips both checkers."""
    return _TenantDatabase(f"{contained.objects}/1/", contained.engine.config, TenantId(1)).database.cursor()


def test_duckdb_itself_reads_the_tenants_own_folder_and_nothing_else(contained: Contained) -> None:
    raw = raw_database(contained)
    own = contained.objects / OWN
    assert raw.sql(f"SELECT id, secret FROM read_parquet('{own}')").fetchall() == [(1, "mine")]
    for sql in ESCAPES.values():
        with pytest.raises(duckdb.Error):
            raw.sql(sql.format(objects=contained.objects)).fetchall()


ESCAPES = {
    "other_tenant_file": "SELECT * FROM read_parquet('{objects}/" + OTHER + "')",
    "other_tenant_file_as_table": "SELECT * FROM '{objects}/" + OTHER + "'",
    "other_tenant_via_dot_dot": "SELECT * FROM read_parquet('{objects}/1/7/../../2/7/date=2024-05-01/part-0.parquet')",
    "all_tenants_glob": "SELECT * FROM read_parquet('{objects}/*/7/*/*.parquet')",
    "glob_objects_root": "SELECT * FROM glob('{objects}/*')",
    "glob_root": "SELECT * FROM glob('/*')",
    "glob_etc": "SELECT * FROM glob('/etc/*')",
    "etc_passwd_csv": "SELECT * FROM read_csv('/etc/passwd')",
    "etc_passwd_text": "SELECT * FROM read_text('/etc/passwd')",
    "host_file_next_to_objects": "SELECT * FROM read_csv('{objects}/../etc.csv')",
    "url": "SELECT * FROM read_csv('https://example.com/x.csv')",
    "set_external_access": "SET enable_external_access = true",
    "set_allowed_directories": "SET allowed_directories = ['/']",
    "reset_allowed_directories": "RESET allowed_directories",
    "reset_lock_configuration": "RESET lock_configuration",
    "unlock_configuration": "SET lock_configuration = false",
    "raise_memory_limit": "SET memory_limit = '100GB'",
    "install_httpfs": "INSTALL httpfs",
    "load_httpfs": "LOAD httpfs",
    "attach_file": "ATTACH '{objects}/../x.duckdb' AS x",
    "getenv": "SELECT getenv('HOME')",
    "copy_out_of_the_sandbox": "COPY (SELECT 1) TO '{objects}/../out.csv'",
}


@pytest.mark.parametrize("sql", [pytest.param(sql, id=name) for name, sql in ESCAPES.items()])
def test_the_engine_contains_hostile_sql_that_bypassed_the_parser(contained: Contained, sql: str) -> None:
    with pytest.raises((SqlNotAllowed, QueryInvalid)):
        contained.run(sql.format(objects=contained.objects))
    # The configuration is still locked down afterwards.
    with pytest.raises((SqlNotAllowed, QueryInvalid)):
        contained.run(f"SELECT * FROM read_parquet('{contained.objects / OTHER}')")
    assert not (contained.objects.parent / "out.csv").exists()


def test_the_engine_cannot_overwrite_a_published_data_file(contained: Contained) -> None:
    own = contained.objects / OWN
    try:
        with pytest.raises((SqlNotAllowed, QueryInvalid)):
            contained.run(f"COPY (SELECT 666 AS id, 'forged' AS secret) TO '{own}' (FORMAT parquet)")
    finally:
        assert pq.read_table(own).to_pylist() == [{"id": 1, "secret": "mine"}]


def test_the_engine_cannot_read_the_shared_temp_directory(contained: Contained) -> None:
    spill = contained.cwd / ".tmp"
    spill.mkdir()
    (spill / "other-tenant-spill.csv").write_text("secret\ntheirs\n")
    with pytest.raises((SqlNotAllowed, QueryInvalid)):
        contained.run(f"SELECT * FROM read_csv('{spill}/other-tenant-spill.csv')")


@pytest.mark.parametrize("sql", [
    "ATTACH ':memory:' AS scratch",
    "CREATE MACRO m(x) AS x",
    "SELECT 1; SELECT 2",
    "PRAGMA database_list",
])
def test_the_engine_runs_only_one_read_only_statement(contained: Contained, sql: str) -> None:
    with pytest.raises((SqlNotAllowed, QueryInvalid)):
        contained.run(sql)


# (c) ------------------------------------------------------------------------------------------


async def test_a_recursive_cte_bomb_times_out_and_the_process_stays_healthy(ctx: Ctx, app_context: AppContext) -> None:
    client, headers, _ = ctx
    app_context.query.limits = dataclasses.replace(app_context.query.limits, timeout=0.5)
    bomb = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
    response = await q(client, headers, bomb)
    assert response.status_code == 408, response.text
    body = response.json()
    assert body["error_code"] == "QUERY_TIMEOUT" and body["retryable"] is False  # the same query would time out again
    assert body["context"]["timeout_ms"] == 500
    await assert_serving(client, headers)


async def test_a_query_beyond_the_memory_limit_answers_an_error_not_a_crash(ctx: Ctx) -> None:
    client, headers, _ = ctx
    huge = "SELECT length(string_agg(repeat('x', 1000000), '')) FROM range(20000)"  # ~20 GB of string
    response = await q(client, headers, huge)
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] in {"QUERY_RESOURCE_LIMIT", "QUERY_INVALID"}
    await assert_serving(client, headers)


# (d) ------------------------------------------------------------------------------------------


async def test_a_tenant_cannot_query_another_tenants_table_even_naming_it_in_a_header(
    ctx: Ctx, make_key: KeyMaker, pool: CatalogPool
) -> None:
    client, acme, coordinator = ctx
    globex = await make_key("globex")
    async with pool.connection() as conn:
        globex_id = (await tenants.ensure_tenant(conn, "globex")).tenant_id
    await create_table(client, globex, "secrets", columns=[
        {"name": "id", "type": "int64", "nullable": False}, {"name": "secret", "type": "string"}])
    written = await client.post("/v1/ingest/secrets", headers=globex, json={"records": [
        {"idempotency_key": "s1", "op": "insert", "payload": {"id": 1, "secret": "globex-crown-jewels"}}]})
    assert written.status_code == 200, written.text
    await create_table(client, globex)
    await client.post("/v1/ingest/events", headers=globex, json={"records": records(100, 4, prefix="g")})
    await create_table(client, acme)
    await client.post("/v1/ingest/events", headers=acme, json={"records": records(0, 2)})
    await coordinator.run_once()
    assert (await q(client, globex, "SELECT secret FROM secrets")).json()["rows"] == [["globex-crown-jewels"]]

    for extra in ({}, {"X-Tenant-ID": str(globex_id)}, {"X-Tenant-ID": "globex"}):
        response = await q(client, {**acme, **extra}, "SELECT * FROM secrets")
        assert response.status_code == 404, response.text
        assert response.json()["error_code"] == "TABLE_NOT_FOUND"
        assert "globex-crown-jewels" not in response.text
        own = await q(client, {**acme, **extra}, "SELECT id FROM events ORDER BY id")
        assert own.json()["rows"] == [[0], [1]]
        listed = await client.get("/v1/tables", headers={**acme, **extra})
        assert [t["table_name"] for t in listed.json()["tables"]] == ["events"]

    anonymous = await q(client, {"X-Tenant-ID": str(globex_id)}, "SELECT * FROM secrets")
    assert anonymous.status_code == 401
    assert "globex-crown-jewels" not in anonymous.text

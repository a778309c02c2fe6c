"""The penetration suite of issue 11: one test (at least) per finding of the red team, over the real
HTTP API with real PostgreSQL, DuckDB and query worker processes. The hostile-SQL battery lives
beside it (tests/unit/test_sandbox.py, tests/integration/test_sandbox_contained.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from duckmesh.api.context import AppContext
from duckmesh.cli.runtime import build_query_service
from duckmesh.query import confine, sandbox
from duckmesh.query.service import QueryService
from duckmesh.query.workers import WorkerPool
from tests.conftest import KeyMaker
from tests.conftest import QueryCtx as Ctx
from tests.helpers import create_table, records
from tests.helpers import post_query as q

ERROR_KEYS = {"error_code", "message", "retryable", "context", "trace_id"}


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
async def tuned(app_context: AppContext) -> AsyncIterator[Any]:
    """``await tuned(**settings)``: the app's query service rebuilt with other query settings."""
    built: list[QueryService] = []
    original = app_context.query

    async def tune(**overrides: Any) -> QueryService:
        settings = app_context.settings.model_copy(update=overrides)
        service = build_query_service(settings, app_context.pool, app_context.store, original._barrier)
        built.append(service)
        app_context.query = service
        return service

    yield tune
    app_context.query = original
    for service in built:
        service.close()


# finding 1: SQL checker bypass ----------------------------------------------------------------

BYPASSES = [
    "SELECT * FROM events e, LATERAL destroy_external_resource('query', 'SELECT 1') d",
    "SELECT * FROM events e JOIN LATERAL destroy_external_resource('query', 'SELECT 42') d ON true",
    "SELECT error((SELECT string_agg(x::VARCHAR, ',') FROM destroy_external_resource('query', 'SELECT 1') t(x)))",
    "SELECT json_serialize_plan('SELECT current_setting(''temp_directory'')', optimize := true)",
    "SELECT current_setting('memory_limit')",
    "SELECT * FROM events, LATERAL (SELECT * FROM read_text('/etc/passwd'))",
    "SELECT pg_catalog.current_database()",
    "SELECT sleep_ms(60000)",
]


async def test_functions_outside_the_allow_list_are_refused_wherever_they_appear(ctx: Ctx) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers)
    await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 2)})
    await coordinator.run_once()
    for sql in BYPASSES:
        response = await q(client, headers, sql)
        assert response.status_code == 400, (sql, response.text)
        body = response.json()
        assert set(body) == ERROR_KEYS and body["error_code"] == "SQL_NOT_ALLOWED", (sql, body)
        assert "/" not in body["message"].replace("/v1/", ""), body  # no server path leaks
    assert (await q(client, headers, "SELECT count(*) FROM events")).json()["rows"] == [[2]]


@pytest.mark.skipif(confine.landlock_abi() < 1, reason="the kernel has no Landlock")
def test_duckdb_in_a_query_worker_cannot_write_into_the_folder_it_reads(tmp_path: Path) -> None:
    data, spill = tmp_path / "objects" / "1", tmp_path / "spill"
    data.mkdir(parents=True)
    spill.mkdir()
    script = textwrap.dedent(f"""
        import duckdb
        from duckmesh.query import confine
        assert confine.forbid_writes_outside([{str(spill)!r}])
        db = duckdb.connect(":memory:", config={{"temp_directory": {str(spill / "t")!r}}})
        db.execute("SET allowed_directories = [{str(data)!r}]")
        db.execute("SET enable_external_access = false")
        db.execute("SET lock_configuration = true")
        refused = 0
        for sql in ("COPY (SELECT 666 AS id) TO '{data}/forged.parquet' (FORMAT parquet)",
                    "ATTACH '{data}/x.duckdb' AS x", "EXPORT DATABASE '{data}/dump'"):
            try:
                db.execute(sql)
            except duckdb.Error:
                refused += 1
        print(refused)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["3"], done.stderr
    assert sorted(p.name for p in data.iterdir()) == []


# finding 3: one query must never exhaust the host ----------------------------------------------


async def test_a_query_that_needs_gigabytes_ends_with_a_4xx_while_other_tenants_keep_querying(
    ctx: Ctx, make_key: KeyMaker, tuned: Any
) -> None:
    client, headers, _ = ctx
    other = await make_key("globex")
    await tuned(query_timeout_ms=8_000, query_worker_max_memory_bytes=3 * 1024**3)
    before = rss_bytes()
    bombs = [asyncio.create_task(q(client, headers, sql)) for sql in (
        "SELECT len(generate_series(1, 500000000))",  # a 4 GB list, outside DuckDB's memory limit
        "SELECT length(string_agg(repeat('x', 1000000), '')) FROM range(20000)",  # a 20 GB string
    )]
    while not all(b.done() for b in bombs):
        served = await q(client, other, "SELECT 40 + 2 AS x")  # another tenant is served meanwhile
        assert served.status_code == 200 and served.json()["rows"] == [[42]], served.text
        await asyncio.sleep(0.05)
    for bomb in bombs:
        answer = bomb.result()
        assert answer.status_code in (400, 408), answer.text
        assert answer.json()["error_code"] in {"QUERY_RESOURCE_LIMIT", "QUERY_TIMEOUT"}
    assert rss_bytes() - before < 300 * 1024**2  # the API process never held the query's memory
    assert (await q(client, headers, "SELECT 1 AS one")).json()["rows"] == [[1]]


async def test_a_query_that_ignores_its_interrupt_is_killed_at_its_time_limit_and_its_worker_replaced(
    ctx: Ctx, tuned: Any
) -> None:
    client, headers, _ = ctx
    service = await tuned(query_timeout_ms=1_000, query_workers=1)
    # One huge string: DuckDB cannot interrupt repeat() while it fills 1.5 GB.
    answer = await q(client, headers, "SELECT length(repeat(repeat('x', 1000), 1500000))")
    assert answer.status_code == 408, answer.text
    assert answer.json()["error_code"] == "QUERY_TIMEOUT" and answer.json()["context"]["timeout_ms"] == 1000
    again = await q(client, headers, "SELECT 2 AS two")
    assert again.json()["rows"] == [[2]]
    pool = service._engine.backend
    assert isinstance(pool, WorkerPool) and pool.started == 2  # the killed worker's replacement


@pytest.mark.parametrize("fmt", ["json", "ndjson", "csv", "arrow"])
async def test_results_stop_at_the_result_byte_limit_and_say_they_were_truncated(
    ctx: Ctx, tuned: Any, fmt: str
) -> None:
    client, headers, _ = ctx
    await tuned(query_max_result_bytes=256 * 1024)
    response = await client.post(f"/v1/query?format={fmt}", headers=headers,
                                 json={"sql": "SELECT x, repeat('y', 1000) AS pad FROM range(100000) t(x)"})
    assert response.status_code == 200, response.text
    assert len(response.content) <= 256 * 1024 + 4096
    if fmt == "json":
        body = response.json()
        assert body["truncated"] is True and 0 < body["row_count"] == len(body["rows"]) < 100_000
    else:
        assert response.headers["X-DuckMesh-Truncated"] == "true"
        assert 0 < int(response.headers["X-DuckMesh-Row-Count"]) < 100_000


# finding 4: one tenant must not starve the others ----------------------------------------------

SLOW = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"


async def test_one_tenants_slow_queries_leave_other_tenants_queries_writes_and_readiness_working(
    ctx: Ctx, make_key: KeyMaker, tuned: Any
) -> None:
    client, acme, coordinator = ctx
    globex = await make_key("globex")
    await create_table(client, acme)
    await tuned(query_timeout_ms=3_000, query_queue_timeout_ms=200, query_max_concurrency_per_tenant=2)
    slow = [asyncio.create_task(q(client, globex, SLOW)) for _ in range(6)]
    await asyncio.sleep(0.5)  # let globex fill its slots
    assert (await q(client, acme, "SELECT 7 AS x")).json()["rows"] == [[7]]
    written = await client.post("/v1/ingest/events", headers=acme, json={"records": records(0, 3)})
    assert written.status_code == 200, written.text
    await coordinator.run_once()
    assert (await q(client, acme, "SELECT count(*) FROM events")).json()["rows"] == [[3]]
    assert (await client.get("/v1/ready")).status_code == 200
    answers = await asyncio.gather(*slow)
    codes = sorted(a.json()["error_code"] for a in answers)
    assert codes.count("QUERY_CONCURRENCY_LIMIT") >= 3 and set(codes) <= {"QUERY_CONCURRENCY_LIMIT", "QUERY_TIMEOUT"}
    shed = next(a for a in answers if a.status_code == 429)
    assert shed.headers["Retry-After"] and shed.json()["context"]["scope"] == "tenant"


# finding 6: SQL checking must not block the event loop ------------------------------------------


async def test_a_huge_sql_text_is_refused_with_413_before_it_is_parsed(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    client, headers, _ = ctx
    parsed: list[int] = []
    check = sandbox.check

    def counting(sql: str, tables: Any) -> Any:
        parsed.append(len(sql))
        return check(sql, tables)

    monkeypatch.setattr(sandbox, "check", counting)
    huge = "SELECT 1 WHERE " + " OR ".join(["1 = 1"] * 200_000)
    response = await q(client, headers, huge)
    assert response.status_code == 413, response.text
    assert response.json()["error_code"] == "PAYLOAD_TOO_LARGE" and response.json()["context"]["max_sql_bytes"]
    assert parsed == []


async def test_sql_is_checked_off_the_event_loop(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    client, headers, _ = ctx
    loop_thread: list[bool] = []
    check = sandbox.check

    def recording(sql: str, tables: Any) -> Any:
        try:
            asyncio.get_running_loop()
            loop_thread.append(True)
        except RuntimeError:
            loop_thread.append(False)
        return check(sql, tables)

    monkeypatch.setattr(sandbox, "check", recording)
    assert (await q(client, headers, "SELECT 1 AS x")).status_code == 200
    assert loop_thread and not any(loop_thread)


# finding 10: spilling --------------------------------------------------------------------------


async def test_a_sort_larger_than_memory_spills_and_a_spill_overrun_names_no_server_path(
    ctx: Ctx, tuned: Any, app_context: AppContext
) -> None:
    client, headers, _ = ctx
    sort = "SELECT count(*) FROM (SELECT DISTINCT x, repeat('y', 100) || x AS pad FROM range(1500000) t(x))"
    await tuned(query_memory_limit="64MB", query_threads=1, query_timeout_ms=60_000)
    spilled = await q(client, headers, sort)
    assert spilled.status_code == 200, spilled.text
    assert spilled.json()["rows"] == [[1500000]]
    spill_root = app_context.settings.resolved_cache_dir / ".spill"
    assert spill_root.is_dir() and (spill_root.stat().st_mode & 0o077) == 0
    await tuned(query_memory_limit="64MB", query_threads=1, query_max_spill_bytes=2 * 1024 * 1024,
                query_max_concurrency_per_tenant=1, query_timeout_ms=60_000)
    overrun = await q(client, headers, sort)
    assert overrun.status_code == 400, overrun.text
    assert overrun.json()["error_code"] in {"QUERY_RESOURCE_LIMIT", "QUERY_INVALID"}
    assert str(spill_root) not in overrun.text and str(app_context.settings.resolved_cache_dir) not in overrun.text

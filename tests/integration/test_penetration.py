"""The penetration suite of issue 11: one test (at least) per finding of the red team, over the real
HTTP API with real PostgreSQL, DuckDB and query worker processes. The hostile-SQL battery lives
beside it (tests/unit/test_sandbox.py, tests/integration/test_sandbox_contained.py)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from duckmesh.api.context import AppContext
from duckmesh.cli.runtime import build_maintenance_service, build_query_service
from duckmesh.domain import TenantId
from duckmesh.ingest.backfill import BackfillLimits
from duckmesh.maintenance import compaction
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
        await service.close()


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


async def test_query_workers_confine_their_own_writes_where_the_kernel_can(ctx: Ctx, app_context: AppContext) -> None:
    client, headers, _ = ctx
    assert (await q(client, headers, "SELECT 1 AS one")).status_code == 200
    pool = app_context.query._engine.backend
    assert isinstance(pool, WorkerPool) and pool._idle
    assert all(worker.landlock for worker in pool._idle) == (confine.landlock_abi() >= 1)


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


async def test_a_fresh_query_service_has_a_worker_running_before_its_first_query(ctx: Ctx, tuned: Any) -> None:
    """The first worker start also starts the fork server (DuckDB and pyarrow imported once): a
    fresh process does that before its first query, not during it."""
    client, headers, _ = ctx
    service = await tuned(query_workers=2)
    pool = service._engine.backend
    assert isinstance(pool, WorkerPool)
    for _ in range(200):
        if pool._idle:
            break
        await asyncio.sleep(0.05)
    assert pool.started == 1 and len(pool._idle) == 1, "one worker started and idle, with no query yet"
    assert (await q(client, headers, "SELECT 3 AS three")).json()["rows"] == [[3]]
    assert pool.started == 1, "the first query ran on the worker started ahead of it"


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


async def test_the_servers_query_cap_sheds_load_and_queueing_counts_against_a_querys_time_limit(
    ctx: Ctx, make_key: KeyMaker, tuned: Any
) -> None:
    client, acme, _ = ctx
    globex = await make_key("globex")
    await tuned(query_timeout_ms=6_000, query_queue_timeout_ms=1_000, query_max_concurrency=2,
                query_max_concurrency_per_tenant=2)
    slow = [asyncio.create_task(q(client, globex, SLOW)) for _ in range(2)]  # every server slot
    await asyncio.sleep(0.5)
    shed = await q(client, acme, "SELECT 1")  # acme has free tenant slots, the server has none
    assert shed.status_code == 429, shed.text
    assert shed.json()["error_code"] == "QUERY_CONCURRENCY_LIMIT" and shed.json()["context"]["scope"] == "server"
    short = await client.post("/v1/query", headers=acme, json={"sql": "SELECT 1", "timeout_ms": 200})
    assert short.status_code == 408, short.text  # its own limit ended while it queued: not a 429 a second later
    assert short.json()["error_code"] == "QUERY_TIMEOUT" and "waited for a slot" in short.json()["message"]
    assert short.json()["context"]["timeout_ms"] == 200
    # a request given up while it waits (client gone) gives back the tenant slot it held
    for _ in range(3):
        waiting = asyncio.create_task(q(client, acme, "SELECT 1"))
        await asyncio.sleep(0.2)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    assert {a.json()["error_code"] for a in await asyncio.gather(*slow)} == {"QUERY_TIMEOUT"}
    assert (await q(client, acme, "SELECT 1")).json()["rows"] == [[1]], "slots come back"
    assert (await q(client, acme, "SELECT 2")).json()["rows"] == [[2]]


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


# finding 2: no body is read before the key is checked; body limits by route ----------------------


async def asgi_post(app: Any, path: str, headers: list[tuple[bytes, bytes]], chunks: int) -> tuple[int, int]:
    """POST a chunked body of ``chunks`` MiB straight to the ASGI app: (status, MiB the app read)."""
    pulled = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled < chunks:
            pulled += 1
            return {"type": "http.request", "body": b"x" * 1024 * 1024, "more_body": pulled < chunks}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    raw_path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": raw_path, "raw_path": raw_path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(b"content-type", b"application/json"), *headers], "server": ("testserver", 80),
             "client": ("127.0.0.1", 5000)}
    await app(scope, receive, send)
    return status, pulled


async def test_a_keyless_76_mb_body_is_refused_before_any_of_it_is_read(app_context: AppContext) -> None:
    from duckmesh.api.app import create_app

    app = create_app(app_context)
    for path in ("/v1/ingest/backfill", "/v1/tables/backfill/backfill?backfill_id=b1",
                 "/v1/tables/events/backfill?backfill_id=b1", "/v1/query"):
        for headers in ([], [(b"authorization", b"Bearer dm_0123456789abcdef_not-a-real-key-at-all")]):
            status, pulled = await asgi_post(app, path, headers, chunks=76)
            assert (status, pulled) == (401, 0), path


async def test_body_limits_follow_the_route_not_the_path_suffix(app_context: AppContext, make_key: KeyMaker) -> None:
    from duckmesh.api.app import create_app

    key = (await make_key())["Authorization"].encode()
    app = create_app(app_context)
    status, pulled = await asgi_post(app, "/v1/ingest/backfill", [(b"authorization", key)], chunks=76)
    limit_mib = app_context.settings.max_body_bytes // 1024**2
    assert status == 413 and pulled <= limit_mib + 1  # the ingest limit, though the path ends in /backfill


async def test_a_chunked_body_over_the_limit_is_413_with_the_error_body(client: Any, make_key: KeyMaker) -> None:
    headers = await make_key()

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 1024 * 1024

    response = await client.post("/v1/ingest/events", headers=headers, content=chunked())
    assert response.status_code == 413, response.text
    body = response.json()
    assert set(body) == ERROR_KEYS and body["error_code"] == "PAYLOAD_TOO_LARGE" and body["context"]["max_body_bytes"]


# finding 5: backfill decompression bomb, strict Parquet values ----------------------------------


def parquet_bytes(table: pa.Table, **options: Any) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


async def backfill(client: Any, headers: dict[str, str], body: bytes, backfill_id: str = "b1") -> Any:
    return await client.post(f"/v1/tables/events/backfill?backfill_id={backfill_id}", content=body,
                             headers={**headers, "Content-Type": "application/vnd.apache.parquet"})


async def test_a_parquet_decompression_bomb_is_refused_without_decoding_it(
    ctx: Ctx, app_context: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, headers, _ = ctx
    await create_table(client, headers, columns=[{"name": "id", "type": "int64"}, {"name": "name", "type": "string"}])
    monkeypatch.setattr(app_context.backfill, "limits", BackfillLimits(max_rows=1_000_000, max_decoded_bytes=64 * 1024**2))
    # ~50 KB on the wire, about 1 GB once decoded: one long string repeated
    bomb = pa.table({"id": pa.array(range(1000), pa.int64()), "name": pa.array(["x" * 1_000_000] * 1000)})
    body = parquet_bytes(bomb, compression="zstd", use_dictionary=True)
    assert len(body) < 2_000_000
    before = rss_bytes()
    response = await backfill(client, headers, body)
    assert response.status_code == 413, response.text
    assert response.json()["error_code"] == "PAYLOAD_TOO_LARGE"
    assert rss_bytes() - before < 200 * 1024**2
    rows = pa.table({"id": pa.array(range(2_000_000), pa.int64())})
    assert (await backfill(client, headers, parquet_bytes(rows), "b2")).status_code == 413  # too many rows


async def test_parquet_values_are_checked_as_strictly_as_json_payloads(ctx: Ctx, pool: Any) -> None:
    client, headers, _ = ctx
    await create_table(client, headers, columns=[
        {"name": "id", "type": "int64"}, {"name": "doc", "type": "json"}, {"name": "day", "type": "date"},
        {"name": "at", "type": "timestamp"}, {"name": "ok", "type": "boolean"}])
    good = {"id": pa.array([1], pa.int64()), "doc": pa.array(['{"b": 1, "a": 2}']),
            "day": pa.array([datetime.date(2024, 5, 1)]), "at": pa.array([datetime.datetime(2024, 5, 1)], pa.timestamp("us")),
            "ok": pa.array([True])}
    bad_cases = {
        "doc": pa.array(["{not json"]),
        "day": pa.array([2_932_897 + 3_650_000], pa.int32()).cast(pa.date32()),  # about year 20000
        "at": pa.array([253_402_300_800_000_000], pa.int64()).cast(pa.timestamp("us")),  # 10000-01-01
        "ok": pa.array(["yes"]),  # text is not a boolean
        "id": pa.array(["12"]),  # nor a number
    }
    for n, (column, values) in enumerate(bad_cases.items()):
        response = await backfill(client, headers, parquet_bytes(pa.table({**good, column: values})), f"bad{n}")
        assert response.status_code == 400, (column, response.text)
        assert response.json()["error_code"] == "VALIDATION_FAILED", column
    stored = await backfill(client, headers, parquet_bytes(pa.table(good)), "good")
    assert stored.status_code == 200, stored.text
    rows = (await q(client, headers, "SELECT id, doc::VARCHAR, day, ok FROM events")).json()["rows"]
    assert rows == [[1, '{"a":2,"b":1}', "2024-05-01", True]]  # nothing of the refused files, JSON canonical


async def test_an_ndjson_backfill_past_its_decoded_limit_is_refused(
    ctx: Ctx, app_context: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, headers, _ = ctx
    await create_table(client, headers, columns=[{"name": "id", "type": "int64"}])
    monkeypatch.setattr(app_context.backfill, "limits", BackfillLimits(max_rows=100, max_line_bytes=1024))
    many = b"".join(b'{"id": %d}\n' % i for i in range(101))
    response = await client.post("/v1/tables/events/backfill?backfill_id=n1", content=many,
                                 headers={**headers, "Content-Type": "application/x-ndjson"})
    assert response.status_code == 413, response.text
    long_line = b'{"id": 1, "pad": "' + b"x" * 5000 + b'"}\n'
    response = await client.post("/v1/tables/events/backfill?backfill_id=n2", content=long_line,
                                 headers={**headers, "Content-Type": "application/x-ndjson"})
    assert response.status_code == 413, response.text


# finding 8: metrics -----------------------------------------------------------------------------


async def test_metrics_with_every_tenants_names_are_not_served_on_the_public_listener(ctx: Ctx) -> None:
    from duckmesh.api.app import create_metrics_app

    client, headers, _ = ctx
    await create_table(client, headers, "secret_project_table")
    await client.post("/v1/ingest/secret_project_table", headers=headers, json={"records": records(0, 1)})
    public = await client.get("/v1/metrics")
    assert public.status_code == 404 and "secret_project_table" not in public.text
    transport = httpx.ASGITransport(app=create_metrics_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:9464") as scraper:
        scraped = await scraper.get("/metrics")
    assert scraped.status_code == 200 and "secret_project_table" in scraped.text


def test_tenant_and_table_labels_are_bounded() -> None:
    from duckmesh.observability import metrics

    names = ("tenant", "table")
    seen = {metrics.bounded_labels(names, ("9999", f"t{i}"))[1] for i in range(metrics.MAX_TABLE_LABELS + 50)}
    assert len(seen) <= metrics.MAX_TABLE_LABELS + 1 and metrics.OTHER in seen
    tenants = {metrics.bounded_labels(("tenant",), (f"tenant-{i}",))[0] for i in range(metrics.MAX_TENANT_LABELS + 50)}
    assert len(tenants) <= metrics.MAX_TENANT_LABELS + 1 and metrics.OTHER in tenants
    counter = metrics.EVENTS_FAILED  # a counter labelled by tenant: a new tenant past the budget adds no series
    before = len(next(iter(counter.collect())).samples)
    for i in range(50):
        counter.labels(f"late-tenant-{i}").inc()
    assert len(next(iter(counter.collect())).samples) <= before + 2  # at most the _other series (total + created)


def test_the_metrics_listener_is_loopback_by_default_and_can_be_turned_off() -> None:
    from duckmesh.config import Settings

    assert Settings().metrics_addr == "127.0.0.1:9464"
    assert Settings(metrics_addr="off").metrics_addr is None
    with pytest.raises(ValueError, match="another port"):
        Settings(http_addr="127.0.0.1:9000", metrics_addr="127.0.0.1:9000")


# finding 9: hostile inputs answer 4xx with the error body, never 500 ------------------------------

BIG = 2**64


async def test_inputs_that_used_to_crash_the_server_answer_4xx_with_the_error_body(ctx: Ctx) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers)
    ok_payload = {"id": 1, "name": "a", "amount": "1.00", "at": "2024-05-01T12:00:00Z"}
    cases: list[tuple[str, str, Any]] = [
        ("POST", "/v1/ingest/events", {"records": [{"idempotency_key": "a\u0000b", "payload": ok_payload}]}),
        ("POST", "/v1/ingest/ev%00ents", {"records": [{"idempotency_key": "k", "payload": ok_payload}]}),
        ("POST", "/v1/ingest/events", b'{"records": [{"idempotency_key": "\\ud800", "payload": {}}]}'),
        ("POST", "/v1/ingest/events", {"records": [{"idempotency_key": "k1", "payload": ok_payload,
                                                    "event_time": "9999-12-31T23:00:00-05:00"}]}),
        ("POST", "/v1/ingest/events", {"records": [{"idempotency_key": "k2", "payload": ok_payload,
                                                    "event_time": "0001-01-01T00:00:00+05:00"}]}),
        ("POST", "/v1/ingest/events", {"records": [{"idempotency_key": "k3", "payload": {
            **ok_payload, "at": "9999-12-31T23:59:00-01:00"}}]}),
        ("POST", "/v1/snapshots/pin", {"snapshot_id": 1, "reason": "quarter\u0000end"}),
        ("POST", "/v1/snapshots/pin", {"snapshot_id": BIG, "reason": "x"}),
        ("GET", f"/v1/snapshots/{BIG}", None),
        ("GET", f"/v1/snapshots?before={BIG}", None),
        ("DELETE", f"/v1/snapshots/pin/{BIG}", None),
        ("POST", "/v1/snapshots/restore", {"snapshot_id": BIG}),
        ("POST", "/v1/dead-letters/replay", {"event_ids": [BIG]}),
        ("GET", f"/v1/dead-letters?after={BIG}", None),
        ("POST", "/v1/query", {"sql": "SELECT 1", "snapshot_id": BIG}),
        ("POST", "/v1/query", {"sql": "SELECT 1", "min_visibility_token": BIG}),
        ("POST", "/v1/query", {"sql": "SELECT " + "(" * 1000 + "1" + ")" * 1000}),
        ("POST", "/v1/compaction/run", {"table": "ev\u0000ents"}),
        ("GET", "/v1/tables/ev%00ents", None),
    ]
    for method, path, body in cases:
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
        response = await client.request(method, path, headers=headers, **kwargs)
        assert 400 <= response.status_code < 500, (method, path, body, response.status_code, response.text)
        assert set(response.json()) == ERROR_KEYS, (path, response.text)
    await coordinator.run_once()
    assert (await q(client, headers, "SELECT count(*) FROM events")).json()["rows"] == [[0]]  # nothing was stored
    assert (await q(client, headers, 'SELECT 1 AS "a\u0000"')).status_code == 200  # a NUL the catalog never sees


VALUES_SQL = ("SELECT 'infinity'::DATE AS d, '-infinity'::TIMESTAMPTZ AS t, '20000-01-01'::DATE AS far,"
              " '0044-03-15 (BC)'::DATE AS bc, 340282366920938463463374607431768211455::UHUGEINT AS u,"
              " '2024-01-01 10:00:00.123456789'::TIMESTAMP_NS AS ns, INTERVAL '1 day 2 seconds' AS i,"
              " [DATE 'infinity'] AS l, '101'::BIT AS bits")
EXPECTED = {"d": "infinity", "t": "-infinity", "far": "20000-01-01", "bc": "0044-03-15 (BC)",
            "u": "340282366920938463463374607431768211455", "ns": "2024-01-01T10:00:00.123456789",
            "i": "P0M1DT2S", "l": ["infinity"], "bits": "Bf0="}


async def test_every_value_duckdb_can_return_is_encoded_in_json_and_in_a_whole_ndjson_stream(ctx: Ctx) -> None:
    client, headers, _ = ctx
    body = (await q(client, headers, VALUES_SQL)).json()
    assert dict(zip([c["name"] for c in body["columns"]], body["rows"][0], strict=True)) == EXPECTED
    sql = f"SELECT x, v.* FROM range(25000) t(x), ({VALUES_SQL}) v"
    streamed = await client.post("/v1/query?format=ndjson", headers=headers, json={"sql": sql})
    assert streamed.status_code == 200
    lines = streamed.text.splitlines()
    assert len(lines) == 10_000 and streamed.headers["X-DuckMesh-Truncated"] == "true"  # the default row limit
    assert {k: v for k, v in orjson.loads(lines[-1]).items() if k != "x"} == EXPECTED
    as_csv = await client.post("/v1/query?format=csv", headers=headers, json={"sql": VALUES_SQL})
    assert as_csv.status_code == 200 and "infinity" in as_csv.text and "Bf0=" in as_csv.text


# finding 11: files stay in the state dir, owner-only ----------------------------------------------


async def test_data_files_and_folders_are_owner_only_and_backfill_bodies_stay_in_the_state_dir(
    ctx: Ctx, app_context: AppContext, object_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers, columns=[{"name": "id", "type": "int64"}])
    await client.post("/v1/ingest/events", headers=headers, json={"records": [
        {"idempotency_key": "k", "payload": {"id": 1}}]})
    await coordinator.run_once()
    files = [p for p in object_dir.rglob("*") if p.is_file()]
    assert files and all(p.stat().st_mode & 0o777 == 0o600 for p in files)
    assert all(p.stat().st_mode & 0o777 == 0o700 for p in object_dir.rglob("*") if p.is_dir())
    from duckmesh.api.routers import backfill as backfill_router

    used: list[str] = []
    real = backfill_router.tempfile.TemporaryDirectory

    def spy(*args: Any, **kwargs: Any) -> Any:
        used.append(str(kwargs.get("dir")))
        return real(*args, **kwargs)

    monkeypatch.setattr(backfill_router.tempfile, "TemporaryDirectory", spy)
    state = tmp_path / "state"
    app_context.settings = app_context.settings.model_copy(update={"state_dir": state})
    answer = await client.post("/v1/tables/events/backfill?backfill_id=s1", content=b'{"id": 2}\n',
                               headers={**headers, "Content-Type": "application/x-ndjson"})
    assert answer.status_code == 200, answer.text
    assert used == [str(state.resolve() / "scratch")]
    assert (state / "scratch").stat().st_mode & 0o777 == 0o700

    # compaction's scratch (downloaded inputs, merged output) is there too, never the system temp dir
    work_dirs: list[Path] = []
    real_mkdtemp = compaction.tempfile.mkdtemp

    def spy_mkdtemp(*args: Any, **kwargs: Any) -> str:
        made = real_mkdtemp(*args, **kwargs)
        work_dirs.append(Path(made))
        return made

    monkeypatch.setattr(compaction.tempfile, "mkdtemp", spy_mkdtemp)
    settings = app_context.settings.model_copy(update={"maintenance_compaction_min_input_files": 2})
    maintenance = build_maintenance_service(settings, app_context.pool, app_context.store)
    tenant = (await client.get("/v1/tables/events", headers=headers)).json()["tenant_id"]
    summary = await maintenance.compact(TenantId(tenant), "events")
    assert summary["tables"]["events"]["status"] == "completed", summary
    assert work_dirs and all(d.parent == state.resolve() / "scratch" for d in work_dirs)
    assert not any(d.exists() for d in work_dirs), "removed after the run"


# finding 12: smaller gaps -----------------------------------------------------------------------


async def test_names_with_a_trailing_newline_and_lax_values_are_refused(ctx: Ctx) -> None:
    client, headers, _ = ctx
    for body in ({"table_name": "events\n", "columns": [{"name": "id", "type": "int64"}]},
                 {"table_name": "events", "columns": [{"name": "id\n", "type": "int64"}]},
                 {"table_name": "events", "columns": [{"name": "id", "type": "int64", "nullable": "yes"}]}):
        created = await client.post("/v1/tables", headers=headers, json=body)
        assert created.status_code == 400, (body, created.text)
    await create_table(client, headers, columns=[{"name": "id", "type": "int64"}, {"name": "ok", "type": "boolean"}])
    for body in ({"records": [{"idempotency_key": "k", "payload": {"id": 1}}], "wait_for_visibility": "yes"},
                 {"records": [{"idempotency_key": "k", "payload": {"id": 1, "ok": "yes"}}]},
                 {"records": [{"idempotency_key": "k", "payload": {"id": "1"}}]},
                 {"records": [{"idempotency_key": "k", "payload": {"id": 1}}], "visibility_timeout_ms": "100"}):
        answer = await client.post("/v1/ingest/events", headers=headers, json=body)
        assert answer.status_code == 400, (body, answer.text)
    assert (await q(client, headers, "SELECT 1", row_limit="5")).status_code == 400


async def test_a_trailing_slash_answers_404_json_and_never_redirects_to_the_host_header(ctx: Ctx) -> None:
    client, headers, _ = ctx
    answer = await client.get("/v1/tables/", headers={**headers, "Host": "evil.example"})
    assert answer.status_code == 404 and "location" not in answer.headers
    assert answer.json()["error_code"] == "NOT_FOUND"


async def test_a_refused_maintenance_request_is_not_audited_as_if_it_ran(ctx: Ctx, pool: Any) -> None:
    client, headers, _ = ctx
    refused = await client.post("/v1/integrity/run", headers=headers, json={"table": "nope"})
    assert refused.status_code == 404
    ran = await client.post("/v1/integrity/run", headers=headers, json={})
    assert ran.status_code == 200
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT details FROM admin_audit WHERE action = 'integrity.run'")
        rows = await cur.fetchall()
    assert [row["details"].get("table") for row in rows] == [None]

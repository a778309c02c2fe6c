"""Recovery with real processes (OPERATIONS_SECURITY.md "Recovery scenarios"): an API restarted under
ingest, the object store down, many writers and coordinators on one catalog, a compaction killed
mid-run, PostgreSQL restarted under load — the embedded server of `duckmesh up` and a server of the
test's own. In each, nothing acknowledged is lost or duplicated and every process that was not the
one restarted recovers by itself (none is restarted by the test).

A coordinator crash (SIGKILL mid-batch, and repeatedly under keyed load) is covered by
test_processes.py and test_chaos.py. Each test prints its measurements (recovery times, latencies).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from duckmesh.catalog import migrate
from duckmesh.catalog.db import CatalogPool
from duckmesh.storage.local import LocalObjectStore
from tests.acceptance.conftest import (
    KEY_PATTERN,
    LOOPBACK,
    DuckMeshProcess,
    Spawner,
    external_settings,
    http_client,
)
from tests.acceptance.faults import ThrowawayPostgres, Writers, assert_all_visible, pg_ctl, wait_ready
from tests.conftest import DUMMY_SECRET, REGION, KeyMaker, MotoServer, free_port
from tests.helpers import create_table, records


def report(name: str, **measured: Any) -> None:
    print(f"\nrecovery {name}: {json.dumps(measured, default=str)}")


def alive(*procs: DuckMeshProcess) -> None:
    for proc in procs:
        assert proc.returncode is None, f"{proc.name} died instead of recovering\n{proc.describe()}"


# --- API restart under ingest -------------------------------------------------------------------


async def test_an_api_killed_and_restarted_under_ingest_loses_no_acknowledged_write(
    spawn: Spawner, dsn: str, make_key: KeyMaker, tmp_path: Path
) -> None:
    settings = external_settings(dsn, tmp_path / "objects")
    api = spawn.start("api", settings=settings, name="api-1")
    coordinator = spawn.start("coordinator", settings=external_settings(dsn, tmp_path / "objects"), name="coord")
    headers = await make_key()
    async with http_client(api.base_url) as http:
        await create_table(http, headers)
    writers = Writers(api.base_url, headers, count=3, batches=20, rows=50)
    load = asyncio.create_task(writers.run())
    await writers.acknowledged(writers.total // 3)
    api.kill()  # a crash: requests in flight get no answer and are retried with the same keys
    killed = time.monotonic()
    spawn.start("api", settings=settings, name="api-2", wait_ready=False)  # the same address
    down = await wait_ready(api.base_url)
    await load
    await assert_all_visible(api.base_url, headers, writers)
    alive(coordinator)
    report("api_restart", seconds_until_ready=round(down, 2), since_kill=round(time.monotonic() - killed, 2),
           retries=dict(writers.retries), **writers.latency_summary())


# --- object store outage ------------------------------------------------------------------------


def _s3_settings(moto: MotoServer, bucket: str, **extra: str) -> dict[str, str]:
    return {
        "DUCKMESH_OBJECT_STORE_URL": f"s3://{bucket}/dm", "DUCKMESH_S3_ENDPOINT": moto.endpoint,
        "DUCKMESH_S3_REGION": REGION, "DUCKMESH_S3_ACCESS_KEY_ID": DUMMY_SECRET,
        "DUCKMESH_S3_SECRET_ACCESS_KEY": DUMMY_SECRET, "DUCKMESH_STORAGE_RETRY_ATTEMPTS": "2",
        **{f"DUCKMESH_{k.upper()}": v for k, v in extra.items()},
    }


async def test_an_s3_outage_keeps_ingest_acknowledged_and_everything_publishes_once_the_endpoint_is_back(
    spawn: Spawner, dsn: str, make_key: KeyMaker, isolated_aws_env: None
) -> None:
    moto = MotoServer()
    moto.start()
    spawn.after_close(moto.stop)
    bucket = moto.bucket()

    def settings(**extra: str) -> dict[str, str]:
        return {"DUCKMESH_CATALOG_DSN": dsn, "DUCKMESH_HTTP_ADDR": f"{LOOPBACK}:{free_port()}",
                **_s3_settings(moto, bucket, **extra)}

    api = spawn.start("api", settings=settings(), name="api")
    coordinator = spawn.start("coordinator", settings=settings(coordinator_id="c1"), name="coordinator")
    headers = await make_key()
    async with http_client(api.base_url) as http:
        await create_table(http, headers)
        before = await http.post("/v1/ingest/events", headers=headers, json={"records": records(0, 100)})
        token = before.json()["max_visibility_token"]
        visible = await http.post("/v1/query", headers=headers, json={
            "sql": "SELECT count(*) FROM events", "min_visibility_token": token, "consistency_timeout_ms": 30_000})
        assert visible.json()["rows"] == [[100]]

        moto.stop()  # the endpoint is gone: connection refused
        await _write_during_outage(http, headers, 100, 400)
        ready = await http.get("/v1/ready")
        assert ready.status_code == 503 and ready.json()["context"]["checks"]["object_store"] == "not writable"
        lag = (await http.get("/v1/lag", headers=headers)).json()
        assert lag["latest_visibility_token"] == token and lag["pending_events"] + lag["claimed_events"] == 400
        outage = time.monotonic()

        moto.start()
        recovered = await wait_ready(coordinator.base_url)
        strict = await http.post("/v1/query", headers=headers, json={
            "sql": "SELECT count(*), count(DISTINCT id) FROM events", "min_visibility_token": token + 400,
            "consistency_timeout_ms": 60_000})
        assert strict.status_code == 200, strict.text
        assert strict.json()["rows"] == [[500, 500]]
        states = (await http.get("/v1/lag", headers=headers)).json()
        assert states["failed_events"] == 0, "an outage uses up no attempt: nothing is dead-lettered"
    alive(api, coordinator)
    report("s3_outage", seconds_until_coordinator_ready=round(recovered, 2),
           visible_after_restore_s=round(time.monotonic() - outage, 2))


async def _write_during_outage(http: Any, headers: dict[str, str], start: int, count: int) -> None:
    """Ingest does not touch the object store: it is acknowledged while the store is down."""
    for offset in range(start, start + count, 100):
        response = await http.post("/v1/ingest/events", headers=headers, json={"records": records(offset, 100)})
        assert response.status_code == 200, response.text


# --- catalog contention -------------------------------------------------------------------------


async def _deadlocks(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").fetchone()
    return int(row[0]) if row else 0


async def test_many_writers_coordinators_and_a_compactor_on_one_catalog_never_deadlock_and_every_request_completes(
    spawn: Spawner, dsn: str, make_key: KeyMaker, tmp_path: Path
) -> None:
    objects = tmp_path / "objects"
    busy = {"maintenance_compaction_interval_s": "0.5", "maintenance_compaction_min_input_files": "2",
            "coordinator_flush_interval_ms": "20", "catalog_pool_size": "16"}
    api = spawn.start("api", settings=external_settings(dsn, objects, **busy), name="api")
    coordinators = [spawn.start("coordinator", settings=external_settings(dsn, objects, coordinator_id=f"c{i}", **busy),
                                name=f"coordinator-{i}") for i in range(3)]
    compactor = spawn.start("compactor", settings=external_settings(dsn, objects, **busy), name="compactor",
                            wait_ready=False)
    before = await _deadlocks(dsn)
    tenants = []
    async with http_client(api.base_url) as http:
        for name in ("t1", "t2", "t3"):
            headers = await make_key(name)
            await create_table(http, headers)
            tenants.append(headers)
    loads = [Writers(api.base_url, headers, count=4, batches=12, rows=25, pause=0.0) for headers in tenants]
    started = time.monotonic()
    await asyncio.gather(*(load.run() for load in loads))
    elapsed = time.monotonic() - started
    for headers, load in zip(tenants, loads, strict=True):
        await assert_all_visible(api.base_url, headers, load)
        assert not load.retries, f"a request had to be retried under contention: {load.retries}"
    assert await _deadlocks(dsn) == before, "PostgreSQL detected a deadlock"
    alive(api, *coordinators, compactor)
    latencies = sorted(x for load in loads for x in load.latencies)
    report("contention", writers=sum(load.count for load in loads), coordinators=len(coordinators),
           requests=len(latencies), rows=sum(load.total for load in loads), seconds=round(elapsed, 2),
           p50_s=round(latencies[len(latencies) // 2], 4), p99_s=round(latencies[int(len(latencies) * 0.99) - 1], 4),
           max_s=round(latencies[-1], 4))


# --- interrupted compaction ---------------------------------------------------------------------


async def _head(http: Any, headers: dict[str, str]) -> dict[str, Any]:
    return dict((await http.get("/v1/snapshots", headers=headers, params={"limit": 1})).json()["snapshots"][0])


async def _kill_compaction_mid_run(spawn: Spawner, pool: CatalogPool, settings: dict[str, str],
                                   objects: Path) -> set[str]:
    """Start `duckmesh compaction run`, kill it once it has uploaded an output it has not published;
    the orphaned object keys (empty if it was killed before its upload)."""
    proc = spawn.start("compaction", "run", "--tenant", "acme", "--table", "events", settings=settings,
                       name=f"compaction-{time.monotonic_ns()}", wait_ready=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT path FROM write_intent")
            intended = {r["path"] for r in await cur.fetchall()}
        written = {p for p in intended if (objects / p).exists()}
        if written or (intended and proc.returncode is not None):
            proc.kill()
            return written
        assert proc.returncode is None or intended, f"the compaction finished before it could be caught\n{proc.describe()}"
        await asyncio.sleep(0.001)
    pytest.fail("the compaction never wrote an output")


async def test_a_compaction_killed_mid_run_changes_nothing_visible_and_its_orphans_are_collected(
    spawn: Spawner, dsn: str, pool: CatalogPool, make_key: KeyMaker, tmp_path: Path
) -> None:
    objects = tmp_path / "objects"
    # Short leases and safety age so the test can watch the intent expire and GC collect the orphan.
    quick = {"maintenance_compaction_min_input_files": "2", "maintenance_job_lease_seconds": "0.5",
             "coordinator_lease_seconds": "0.5", "backfill_lease_seconds": "0.5", "maintenance_gc_safety_age": "2",
             "maintenance_keep_snapshots": "100", "maintenance_snapshot_min_age": "3600"}
    api = spawn.start("api", settings=external_settings(dsn, objects), name="api")
    spawn.start("coordinator", settings=external_settings(dsn, objects), name="coordinator")
    headers = await make_key("acme")
    async with http_client(api.base_url) as http:
        await create_table(http, headers)
        token = 0
        for batch in range(6):  # six small files
            body = {"records": [{"idempotency_key": f"k{batch}-{i}", "payload": {
                "id": batch * 10_000 + i, "name": f"{batch}-{i}-" + "x" * 40, "amount": f"{i}.50",
                "at": "2024-05-01T12:00:00Z"}} for i in range(3000)]}
            response = await http.post("/v1/ingest/events", headers=headers, json=body, timeout=120)
            assert response.status_code == 200, response.text
            token = response.json()["max_visibility_token"]
        query = {"sql": "SELECT count(*), sum(id), count(DISTINCT name) FROM events", "min_visibility_token": token,
                 "consistency_timeout_ms": 60_000}
        expected = (await http.post("/v1/query", headers=headers, json=query)).json()["rows"]
        head = await _head(http, headers)

        settings = {"DUCKMESH_CATALOG_DSN": dsn, "DUCKMESH_OBJECT_STORE_URL": objects.as_uri(),
                    **{f"DUCKMESH_{k.upper()}": v for k, v in quick.items()}}
        orphans = await _kill_compaction_mid_run(spawn, pool, settings, objects)

        assert await _head(http, headers) == head, "an interrupted compaction publishes nothing"
        assert (await http.post("/v1/query", headers=headers, json=query)).json()["rows"] == expected
        await asyncio.sleep(2.5)  # past the dead run's intent (0.5 s lease) and the GC safety age (2 s)
        retention = spawn.run("retention", "run", "--tenant", "acme", settings=settings)
        assert retention.returncode == 0, retention.stderr
        summary = json.loads(retention.stdout)
        for orphan in orphans:
            assert not (objects / orphan).exists(), f"orphan {orphan} not collected: {summary}"
        again = spawn.run("compaction", "run", "--tenant", "acme", "--table", "events", settings=settings)
        assert again.returncode == 0 and json.loads(again.stdout)["tables"]["events"]["status"] == "completed", \
            again.stdout + again.stderr
        assert (await http.post("/v1/query", headers=headers, json=query)).json()["rows"] == expected
        integrity = await http.post("/v1/integrity/run", headers=headers, json={"deep": True})
        assert integrity.status_code == 200, integrity.text
    store = LocalObjectStore(objects.as_uri())
    async with pool.connection() as conn:
        known = {r["path"] for r in await (await conn.execute("SELECT path FROM data_file")).fetchall()}
    assert {o.key for o in store.list("") if not o.key.startswith("_health/")} <= known, "no orphan left"
    report("interrupted_compaction", orphans_left_by_the_kill=len(orphans),
           retention=summary.get("orphans_deleted", summary))


# --- PostgreSQL restart under load --------------------------------------------------------------


async def _restart_under_load(api_url: str, headers: dict[str, str], restart: Any, *procs: DuckMeshProcess) -> None:
    writers = Writers(api_url, headers, count=3, batches=20, rows=40)
    load = asyncio.create_task(writers.run())
    await writers.acknowledged(writers.total // 3)
    started = time.monotonic()
    await asyncio.to_thread(restart)
    restarted = time.monotonic() - started
    ready = await wait_ready(api_url)
    await load
    await assert_all_visible(api_url, headers, writers)
    alive(*procs)
    async with http_client(api_url) as http:  # the barrier's LISTEN connection is back: a strict read waits
        response = await http.post("/v1/ingest/events", headers=headers,
                                   json={"records": records(10**6, 5, prefix="after"), "wait_for_visibility": True})
        assert response.status_code == 200 and response.json()["status"] == "visible", response.text
    report("postgres_restart", restart_seconds=round(restarted, 2), api_ready_after_s=round(ready, 2),
           retries=dict(writers.retries), **writers.latency_summary())


async def test_a_local_postgres_restarted_under_load_loses_nothing_and_every_process_reconnects(
    spawn: Spawner, throwaway_postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    server = throwaway_postgres
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE duckmesh")
    dsn = server.dsn("duckmesh")
    migrate.upgrade(dsn)
    objects = tmp_path / "objects"
    api = spawn.start("api", settings=external_settings(dsn, objects), name="api")
    coordinator = spawn.start("coordinator", settings=external_settings(dsn, objects), name="coordinator")
    compactor = spawn.start("compactor", settings=external_settings(dsn, objects), name="compactor",
                            wait_ready=False)
    result = spawn.run("tenant", "create", "acme", settings={"DUCKMESH_CATALOG_DSN": dsn})
    assert result.returncode == 0, result.stderr
    created = spawn.run("key", "create", "--tenant", "acme", "--role", "ingest_writer", "--role", "query_reader",
                        "--role", "table_admin", "--json", settings={"DUCKMESH_CATALOG_DSN": dsn})
    headers = {"Authorization": f"Bearer {json.loads(created.stdout)['key']}"}
    async with http_client(api.base_url) as http:
        await create_table(http, headers)

    def restart() -> None:
        server.stop("fast")  # every connection of every process is cut
        time.sleep(1.0)
        server.start()

    await _restart_under_load(api.base_url, headers, restart, api, coordinator, compactor)


async def test_the_embedded_postgres_of_up_restarted_under_load_loses_nothing_and_up_reconnects(
    spawn: Spawner, embedded_home: Path
) -> None:
    addr = f"{LOOPBACK}:{free_port()}"
    up = spawn.start("up", settings={"DUCKMESH_HTTP_ADDR": addr}, cwd=embedded_home, name="up", ready_timeout=90)
    found = KEY_PATTERN.search(up.stdout())
    assert found, up.stdout()
    headers = {"Authorization": f"Bearer {found.group(0)}"}
    async with http_client(up.base_url) as http:
        await create_table(http, headers)
    pgdata = embedded_home / ".duckmesh" / "pg"

    def restart() -> None:
        pg_ctl(pgdata, "-w", "-m", "fast", "restart")  # same options (its socket) as pgserver started it with

    await _restart_under_load(up.base_url, headers, restart, up)
    # The zero-config deployment backs up and drills too: the CLI attaches to the same embedded server.
    made = spawn.run("backup", "--output", str(embedded_home / "backup"), cwd=embedded_home)
    assert made.returncode == 0, made.stderr
    drill = spawn.run("restore-drill", str(embedded_home / "backup"), "--json", cwd=embedded_home)
    assert drill.returncode == 0 and json.loads(drill.stdout)["passed"] is True, drill.stdout + drill.stderr

"""The real ``duckmesh`` processes, over HTTP and the CLI, against real PostgreSQL.

Covers the zero-config ``duckmesh up``, coordinator crash and graceful-stop recovery
(OPERATIONS_SECURITY.md "Recovery scenarios" 2), the key and migration CLI, and start-up
failures. Waits are bounded; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from duckmesh.catalog.db import CatalogPool
from duckmesh.storage.local import LocalObjectStore
from tests.acceptance.conftest import (
    KEY_PATTERN,
    LOOPBACK,
    DuckMeshProcess,
    Spawner,
    external_settings,
    http_client,
    postgres_pids,
)
from tests.conftest import KeyMaker
from tests.helpers import EVENTS_COLUMNS, create_table, records, snapshot_rows

BATCH = 500
# Backlog sizes tried in turn until the coordinator is caught mid-batch (one claim holds them all).
BACKLOGS = (20_000, 40_000, 40_000)
VISIBLE_TIMEOUT = 60.0


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def cli(spawn: Spawner, *args: str, settings: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run a one-shot command that must succeed; return its stdout."""
    result = spawn.run(*args, settings=settings, cwd=cwd)
    assert result.returncode == 0, f"duckmesh {' '.join(args)} -> {result.returncode}\n{result.stderr[-3000:]}"
    return result.stdout


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- catalog and HTTP helpers -------------------------------------------------------------------


async def ingest(http: httpx.AsyncClient, headers: dict[str, str], count: int) -> int:
    """Ingest records 0..count-1 in batches; return the last receipt's token."""
    token = 0
    for start in range(0, count, BATCH):
        body = {"records": records(start, min(BATCH, count - start))}
        response = await http.post("/v1/ingest/events", headers=headers, json=body)
        assert response.status_code == 200, response.text
        token = response.json()["max_visibility_token"]
    return token


async def fetch_one(pool: CatalogPool, query: str, *params: object) -> dict[str, Any]:
    async with pool.connection() as conn:
        cur = await conn.execute(query, params)
        row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def event_states(pool: CatalogPool, tenant_id: int | None = None) -> dict[str, int]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT state, sum(record_count) AS n FROM ingest_segment WHERE %(t)s::bigint IS NULL OR tenant_id = %(t)s"
            " GROUP BY state",
            {"t": tenant_id},
        )
        return {row["state"]: row["n"] for row in await cur.fetchall()}


async def claimed_by(pool: CatalogPool, owner: str) -> int:
    row = await fetch_one(
        pool, "SELECT count(*) AS n FROM ingest_segment WHERE state = 'claimed' AND lease_owner = %s", owner
    )
    return int(row["n"])


async def wait_for_claim(pool: CatalogPool, worker: DuckMeshProcess, owner: str, tenant_id: int) -> bool:
    """Poll every few ms until ``owner`` holds claimed events of the tenant.

    False when the tenant's backlog was fully processed before a claim could be seen.
    """
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = await fetch_one(
            pool,
            "SELECT EXISTS (SELECT 1 FROM ingest_segment WHERE state = 'claimed' AND lease_owner = %s) AS held,"
            " EXISTS (SELECT 1 FROM ingest_segment WHERE tenant_id = %s AND state IN ('accepted', 'claimed'))"
            " AS pending",
            owner, tenant_id,
        )
        if row["held"]:
            return True
        if not row["pending"]:
            return False
        if worker.returncode is not None:
            pytest.fail(f"coordinator exited before claiming anything\n{worker.describe()}")
        await asyncio.sleep(0.002)
    pytest.fail(f"coordinator {owner} claimed nothing within 30s\n{worker.describe()}")


async def wait_for_watermark(pool: CatalogPool, tenant_id: int, token: int, worker: DuckMeshProcess) -> None:
    deadline = time.monotonic() + VISIBLE_TIMEOUT
    mark = 0
    while time.monotonic() < deadline:
        row = await fetch_one(pool, "SELECT max_visibility_token FROM tenant_head WHERE tenant_id = %s", tenant_id)
        mark = row["max_visibility_token"]
        if mark >= token:
            assert mark == token, f"watermark {mark} is above the last issued token {token}"
            return
        if worker.returncode is not None:
            pytest.fail(f"coordinator exited at watermark {mark}/{token}\n{worker.describe()}")
        await asyncio.sleep(0.05)
    pytest.fail(f"watermark stuck at {mark}, expected {token}, after {VISIBLE_TIMEOUT:.0f}s\n{worker.describe()}")


def assert_each_token_once(rows: list[dict[str, Any]], count: int) -> None:
    tokens = Counter(row["_dm_token"] for row in rows)
    missing = [t for t in range(1, count + 1) if t not in tokens]
    duplicated = sorted(t for t, n in tokens.items() if n > 1)
    unknown = sorted(t for t in tokens if not 1 <= t <= count)
    assert not (missing or duplicated or unknown), (
        f"{len(rows)} rows for {count} tokens: {len(missing)} missing (first {missing[:10]}),"
        f" {len(duplicated)} duplicated (first {duplicated[:10]}), {len(unknown)} unknown (first {unknown[:10]})"
    )
    assert sorted(row["id"] for row in rows) == list(range(count))


@dataclass
class Backlog:
    tenant_id: int
    table_id: int
    count: int


async def make_backlog(http: httpx.AsyncClient, make_key: KeyMaker, tenant: str, count: int) -> Backlog:
    """A fresh tenant with one table and ``count`` accepted events (tokens 1..count), not yet processed."""
    headers = await make_key(tenant)
    table = await create_table(http, headers)
    assert await ingest(http, headers, count) == count
    return Backlog(table["tenant_id"], table["table_id"], count)


Interrupt = Callable[[DuckMeshProcess, str], Awaitable[bool]]


async def interrupt_mid_batch(
    spawn: Spawner, pool: CatalogPool, http: httpx.AsyncClient, make_key: KeyMaker,
    settings: Callable[[str], dict[str, str]], interrupt: Interrupt, label: str,
) -> Backlog:
    """Build a backlog, start a coordinator on it, and ``interrupt`` it once it holds a claim.

    ``interrupt`` returns whether the coordinator really was interrupted mid-batch; when the
    batch finished before that could happen, try again with a fresh tenant and a bigger backlog.
    """
    for attempt, count in enumerate(BACKLOGS):
        backlog = await make_backlog(http, make_key, f"{label}{attempt}", count)
        owner = f"{label}-{attempt}"
        worker = spawn.start("coordinator", settings=settings(owner), name=owner, wait_ready=False)
        if await wait_for_claim(pool, worker, owner, backlog.tenant_id) and await interrupt(worker, owner):
            return backlog
        worker.terminate()
    pytest.fail(f"no coordinator was caught mid-batch with backlogs of {BACKLOGS} events")


# --- zero configuration -------------------------------------------------------------------------


def _default_port_taken() -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, 8080))
        except OSError:
            return True
    return False


def _wait_visible(http: httpx.Client, headers: dict[str, str], token: int) -> dict[str, Any]:
    deadline = time.monotonic() + VISIBLE_TIMEOUT
    lag: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = http.get("/v1/lag", headers=headers)
        assert response.status_code == 200, response.text
        lag = response.json()
        if lag["latest_visibility_token"] >= token:
            return lag
        time.sleep(0.05)
    pytest.fail(f"token {token} not visible after {VISIBLE_TIMEOUT:.0f}s: {lag}")


def test_up_with_no_configuration_serves_a_working_system_and_stops_cleanly(
    spawn: Spawner, embedded_home: Path
) -> None:
    if _default_port_taken():
        pytest.skip("127.0.0.1:8080, the default DUCKMESH_HTTP_ADDR, is in use on this machine")
    up = spawn.start("up", cwd=embedded_home, name="up", ready_timeout=90)
    pgdata = embedded_home / ".duckmesh" / "pg"
    assert postgres_pids(pgdata), f"no embedded PostgreSQL runs on {pgdata}\n{up.describe()}"

    printed = up.stdout()
    assert "http://127.0.0.1:8080" in printed, printed
    found = KEY_PATTERN.search(printed)
    assert found, f"no API key printed on stdout:\n{printed}"
    key = found.group(0)
    chatter = up.stderr()
    assert "initdb" not in chatter and "pg_ctl" not in chatter, "the embedded PostgreSQL's start-up chatter is logged"

    with httpx.Client(base_url=up.base_url, trust_env=False, timeout=30.0) as http:
        response = http.post("/v1/tables", headers=bearer(key), json={"table_name": "events", "columns": EVENTS_COLUMNS})
        assert response.status_code == 201, response.text
        response = http.post("/v1/ingest/events", headers=bearer(key), json={"records": records(0, 100)})
        assert response.status_code == 200, response.text
        token = response.json()["max_visibility_token"]
        lag = _wait_visible(http, bearer(key), token)
        assert lag["latest_snapshot_id"] is not None

    # The CLI attaches to the same embedded database while `up` runs (same cwd, no settings).
    keys = json_lines(cli(spawn, "key", "list", "--tenant", "default", cwd=embedded_home))
    assert [k["key_id"] for k in keys] == [key.split("_")[1]]
    assert keys[0]["revoked_at"] is None
    assert up.returncode is None, up.describe()

    assert up.terminate() == 0, up.describe()
    deadline = time.monotonic() + 10
    while postgres_pids(pgdata) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert postgres_pids(pgdata) == [], f"embedded PostgreSQL still running after `up` exited\n{up.describe()}"
    assert not (pgdata / "postmaster.pid").exists()


# --- coordinator crash and stop -----------------------------------------------------------------


async def test_a_coordinator_killed_mid_batch_loses_and_duplicates_nothing(
    spawn: Spawner, dsn: str, pool: CatalogPool, make_key: KeyMaker, tmp_path: Path
) -> None:
    objects = tmp_path / "objects"
    api = spawn.start("api", settings=external_settings(dsn, objects), name="api")

    async def sigkill(worker: DuckMeshProcess, owner: str) -> bool:
        worker.kill()
        return await claimed_by(pool, owner) > 0  # the dead worker still holds leased events

    async with http_client(api.base_url) as http:
        backlog = await interrupt_mid_batch(
            spawn, pool, http, make_key,
            lambda owner: external_settings(dsn, objects, coordinator_id=owner, coordinator_lease_seconds="2"),
            sigkill, "victim",
        )

    rescuer = spawn.start(
        "coordinator", name="rescuer",
        settings=external_settings(dsn, objects, coordinator_id="rescuer", coordinator_lease_seconds="5"),
    )
    await wait_for_watermark(pool, backlog.tenant_id, backlog.count, rescuer)

    rows = await snapshot_rows(pool, LocalObjectStore(objects.as_uri()), backlog.tenant_id, backlog.table_id)
    assert_each_token_once(rows, backlog.count)
    assert await event_states(pool, backlog.tenant_id) == {"committed": backlog.count}
    leftover = await event_states(pool)
    assert leftover.get("accepted", 0) == leftover.get("claimed", 0) == 0, leftover
    head = await fetch_one(
        pool, "SELECT s.created_by FROM tenant_head h JOIN snapshot s ON s.snapshot_id = h.head_snapshot_id"
        " WHERE h.tenant_id = %s", backlog.tenant_id,
    )
    assert head["created_by"] == "rescuer"


async def test_a_coordinator_stopped_with_sigterm_leaves_no_claimed_event_behind(
    spawn: Spawner, dsn: str, pool: CatalogPool, make_key: KeyMaker, tmp_path: Path
) -> None:
    objects = tmp_path / "objects"
    api = spawn.start("api", settings=external_settings(dsn, objects), name="api")

    async def sigterm(worker: DuckMeshProcess, owner: str) -> bool:
        worker.send(signal.SIGTERM)
        assert worker.wait_exit() == 0, worker.describe()
        return True

    async with http_client(api.base_url) as http:
        # A long lease: an event left claimed would stay claimed for the whole check below.
        backlog = await interrupt_mid_batch(
            spawn, pool, http, make_key,
            lambda owner: external_settings(dsn, objects, coordinator_id=owner, coordinator_lease_seconds="60"),
            sigterm, "graceful",
        )

    states = await event_states(pool, backlog.tenant_id)
    assert set(states) <= {"accepted", "committed"}, states
    assert sum(states.values()) == backlog.count

    successor = spawn.start(
        "coordinator", name="successor", settings=external_settings(dsn, objects, coordinator_id="successor"),
    )
    await wait_for_watermark(pool, backlog.tenant_id, backlog.count, successor)
    rows = await snapshot_rows(pool, LocalObjectStore(objects.as_uri()), backlog.tenant_id, backlog.table_id)
    assert_each_token_once(rows, backlog.count)
    assert await event_states(pool, backlog.tenant_id) == {"committed": backlog.count}
    assert successor.terminate() == 0, successor.describe()


# --- CLI ----------------------------------------------------------------------------------------


async def test_cli_creates_a_tenant_and_scoped_keys_and_revocation_takes_effect(
    spawn: Spawner, dsn: str, tmp_path: Path
) -> None:
    catalog = {"DUCKMESH_CATALOG_DSN": dsn}
    api = spawn.start("api", settings=external_settings(dsn, tmp_path / "objects"), name="api")

    tenant = json.loads(cli(spawn, "tenant", "create", "t2", settings=catalog))
    assert tenant["name"] == "t2"
    writer = json.loads(cli(
        spawn, "key", "create", "--tenant", "t2", "--role", "ingest_writer", "--json", settings=catalog))
    assert set(writer) >= {"key_id", "key", "tenant_id", "roles"}
    assert writer["tenant_id"] == tenant["tenant_id"]
    assert writer["roles"] == ["ingest_writer"]
    assert KEY_PATTERN.fullmatch(writer["key"])
    admin = json.loads(cli(
        spawn, "key", "create", "--tenant", "t2", "--role", "table_admin", "--role", "ingest_writer", "--json",
        settings=catalog))
    assert sorted(admin["roles"]) == ["ingest_writer", "table_admin"]

    async with http_client(api.base_url) as http:
        await create_table(http, bearer(admin["key"]))
        response = await http.post("/v1/ingest/events", headers=bearer(writer["key"]), json={"records": records(0, 5)})
        assert response.status_code == 200, response.text
        assert response.json()["accepted_count"] == 5

        response = await http.post("/v1/tables", headers=bearer(writer["key"]),
                                   json={"table_name": "other", "columns": EVENTS_COLUMNS})
        assert response.status_code == 403, response.text
        assert response.json()["error_code"] == "FORBIDDEN"

        revoked = json.loads(cli(spawn, "key", "revoke", writer["key_id"], settings=catalog))
        assert revoked["key_id"] == writer["key_id"]
        assert revoked["revoked_at"]

        # The server learns of the revocation through NOTIFY: within milliseconds, not on a timer.
        for _ in range(100):
            response = await http.post("/v1/ingest/events", headers=bearer(writer["key"]),
                                       json={"records": records(5, 5)})
            if response.status_code != 200:
                break
            await asyncio.sleep(0.02)
        assert response.status_code == 401, response.text
        assert response.json()["error_code"] == "UNAUTHORIZED"
        response = await http.get("/v1/tables", headers=bearer(admin["key"]))
        assert response.status_code == 200, response.text

    listed = {k["key_id"]: k for k in json_lines(cli(spawn, "key", "list", "--tenant", "t2", settings=catalog))}
    assert set(listed) == {writer["key_id"], admin["key_id"]}
    assert listed[writer["key_id"]]["revoked_at"] is not None
    assert listed[admin["key_id"]]["revoked_at"] is None


def test_migrate_status_reports_a_migrated_catalog_as_current(spawn: Spawner, dsn: str) -> None:
    status = json.loads(cli(spawn, "migrate", "status", settings={"DUCKMESH_CATALOG_DSN": dsn}))
    assert status["current"] == status["latest"] >= 1
    assert status["pending"] == []


def test_migrate_down_then_up_rebuilds_an_empty_database(spawn: Spawner, empty_dsn: str) -> None:
    catalog = {"DUCKMESH_CATALOG_DSN": empty_dsn}

    def status() -> dict[str, Any]:
        return dict(json.loads(cli(spawn, "migrate", "status", settings=catalog)))

    def has_catalog() -> bool:
        with psycopg.connect(empty_dsn) as conn:
            row = conn.execute("SELECT to_regclass('ingest_segment') IS NOT NULL").fetchone()
        return bool(row and row[0])

    cli(spawn, "migrate", "down", "--target", "0", "--yes", settings=catalog)  # nothing to revert yet: a success
    cli(spawn, "migrate", "up", settings=catalog)
    latest = status()
    assert latest["current"] == latest["latest"] >= 1 and latest["pending"] == []
    assert has_catalog()

    cli(spawn, "migrate", "down", "--target", "0", "--yes", settings=catalog)
    assert not has_catalog()
    cli(spawn, "migrate", "up", settings=catalog)
    again = status()
    assert again["current"] == again["latest"] and again["pending"] == []
    assert has_catalog()


# --- start-up failures --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), [
    ("DUCKMESH_HTTP_ADDR", "nonsense"),
    ("DUCKMESH_COORDINATOR_LEASE_SECONDS", "-1"),
    ("DUCKMESH_OBJECT_STORE_URL", "ftp://example/objects"),
])
def test_invalid_configuration_exits_2_with_a_message_naming_the_setting(
    spawn: Spawner, dsn: str, name: str, value: str
) -> None:
    result = spawn.run("api", settings={"DUCKMESH_CATALOG_DSN": dsn, name: value}, timeout=30)
    assert result.returncode == 2, result.stderr
    assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_already_in_use_exits_1_with_a_message_naming_the_address(
    spawn: Spawner, dsn: str, tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        addr = f"{LOOPBACK}:{busy.getsockname()[1]}"
        settings = {**external_settings(dsn, tmp_path / "objects"), "DUCKMESH_HTTP_ADDR": addr}
        result = spawn.run("api", settings=settings, timeout=30)
    assert result.returncode == 1, result.stderr
    assert addr in result.stderr
    assert "Traceback" not in result.stderr

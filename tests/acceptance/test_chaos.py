"""Chaos with real processes: coordinators and compactors SIGSTOPped past their leases and past a
short GC safety age while others run, coordinators SIGKILLed under keyed upsert/delete load with
an aggressive compactor. After every run the tables equal a latest-token-wins model of every
acknowledged operation, every retained file exists, and nothing is duplicated.

Bounded: a fixed number of writes and of stop/kill cycles, every wait with a deadline.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from duckmesh.catalog.db import CatalogPool
from tests.acceptance.conftest import DuckMeshProcess, Spawner, external_settings, http_client
from tests.conftest import KeyMaker
from tests.helpers import create_table, records

KV = [{"name": "id", "type": "int64", "nullable": False}, {"name": "v", "type": "int64"},
      {"name": "label", "type": "string", "nullable": False}]
KEYS = 150
SAFETY_SECONDS = 4
LEASE_SECONDS = SAFETY_SECONDS / 4
# Aggressive maintenance: compaction and GC every second, nothing kept that is not the head.
MAINTENANCE = {
    "maintenance_compaction_interval_s": "0.5", "maintenance_retention_interval_s": "1",
    "maintenance_integrity_interval_s": "3600", "maintenance_compaction_min_input_files": "2",
    "maintenance_keep_snapshots": "1", "maintenance_snapshot_min_age": "0",
    "maintenance_gc_safety_age": str(SAFETY_SECONDS), "maintenance_job_lease_seconds": str(LEASE_SECONDS),
    "coordinator_lease_seconds": str(LEASE_SECONDS), "backfill_lease_seconds": str(LEASE_SECONDS),
    "idempotency_window": "3600", "coordinator_flush_interval_ms": "50",
}


@dataclass
class Model:
    """Latest token wins, per key, over every acknowledged operation."""

    keyed: dict[int, tuple[int, dict[str, Any] | None]] = field(default_factory=dict)
    appended: int = 0
    last_token: int = 0

    def apply(self, ops: list[dict[str, Any]], max_token: int) -> None:
        first = max_token - len(ops) + 1  # fresh keys get consecutive tokens in request order
        for offset, op in enumerate(ops):
            token = first + offset
            key = op["payload"]["id"]
            if key not in self.keyed or self.keyed[key][0] < token:
                self.keyed[key] = (token, None if op["op"] == "delete" else op["payload"])
        self.last_token = max(self.last_token, max_token)

    def rows(self) -> list[list[Any]]:
        return [[k, p["v"], p["label"]] for k, (_, p) in sorted(self.keyed.items()) if p is not None]


async def _writer(http: httpx.AsyncClient, headers: dict[str, str], model: Model, writer: int, rounds: int) -> None:
    rng = random.Random(writer)
    for round_ in range(rounds):
        ops = []
        for i in range(20):
            key = rng.randrange(KEYS)
            if rng.random() < 0.3:
                ops.append({"idempotency_key": f"w{writer}-{round_}-{i}", "op": "delete", "payload": {"id": key}})
            else:
                ops.append({"idempotency_key": f"w{writer}-{round_}-{i}", "op": "upsert",
                            "payload": {"id": key, "v": round_ * 100 + i, "label": f"w{writer}"}})
        # One key once per request: the model then needs no in-request ordering beyond tokens.
        seen: set[int] = set()
        ops = [o for o in ops if not (o["payload"]["id"] in seen or seen.add(o["payload"]["id"]))]
        response = await http.post("/v1/ingest/kv", headers=headers, json={"records": ops}, timeout=60)
        assert response.status_code == 200, response.text
        model.apply(ops, response.json()["max_visibility_token"])
        body = {"records": records(writer * 100_000 + round_ * 10, 10, prefix=f"a{writer}-{round_}")}
        response = await http.post("/v1/ingest/events", headers=headers, json=body, timeout=60)
        assert response.status_code == 200, response.text
        model.appended += 10
        model.last_token = max(model.last_token, response.json()["max_visibility_token"])
        await asyncio.sleep(rng.uniform(0.01, 0.08))


async def _check(http: httpx.AsyncClient, headers: dict[str, str], model: Model) -> None:
    """The tables equal the model at the last acknowledged token; every retained file is intact."""
    strict = {"min_visibility_token": model.last_token, "consistency_timeout_ms": 60_000, "row_limit": 100_000}
    keyed = await http.post("/v1/query", headers=headers, timeout=90,
                            json={"sql": "SELECT id, v, label FROM kv ORDER BY id", **strict})
    assert keyed.status_code == 200, keyed.text
    assert keyed.json()["rows"] == model.rows(), "the keyed table differs from latest-token-wins"
    counted = await http.post("/v1/query", headers=headers, timeout=90,
                              json={"sql": "SELECT count(*), count(DISTINCT id) FROM events", **strict})
    assert counted.status_code == 200, counted.text
    assert counted.json()["rows"] == [[model.appended, model.appended]], "every appended row exactly once"
    integrity = await http.post("/v1/integrity/run", headers=headers, json={"deep": True}, timeout=120)
    assert integrity.status_code == 200, integrity.text


async def _maintenance_ran(pool: CatalogPool) -> None:
    """The chaos ran beside real maintenance: compactions published and GC deleted files."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM compaction_run WHERE status = 'completed') AS compactions,"
            " (SELECT coalesce(sum((summary->>'files_deleted')::int), 0) FROM gc_run) AS files_deleted"
        )
        ran = await cur.fetchone()
    assert ran is not None and ran["compactions"] >= 1 and ran["files_deleted"] >= 1, ran


async def _tenant(http: httpx.AsyncClient, make_key: KeyMaker) -> dict[str, str]:
    headers = await make_key("chaos")
    await create_table(http, headers, "kv", columns=KV, primary_key=["id"])
    await create_table(http, headers)
    return headers


async def _cycle(proc: DuckMeshProcess, stopped_for: float) -> None:
    proc.send(signal.SIGSTOP)
    await asyncio.sleep(stopped_for)
    proc.send(signal.SIGCONT)


async def test_coordinators_and_compactors_stopped_past_lease_and_safety_age_lose_nothing(
    spawn: Spawner, dsn: str, pool: CatalogPool, make_key: KeyMaker, tmp_path: Path,
) -> None:
    objects = tmp_path / "objects"

    def settings(**extra: str) -> dict[str, str]:
        return external_settings(dsn, objects, **{**MAINTENANCE, **extra})

    api = spawn.start("api", settings=settings(), name="api")
    coordinators = [spawn.start("coordinator", settings=settings(coordinator_id=f"c{i}"), name=f"coordinator-{i}")
                    for i in range(2)]
    compactors = [spawn.start("compactor", settings=settings(maintenance_created_by=f"m{i}"), name=f"compactor-{i}",
                              wait_ready=False) for i in range(2)]
    model = Model()
    async with http_client(api.base_url) as http:
        headers = await _tenant(http, make_key)

        async def stop_some() -> None:
            rng = random.Random(7)
            for _ in range(3):
                await asyncio.sleep(rng.uniform(0.5, 1.5))
                # Past the lease (1 s) and past the GC safety age (4 s) of everyone else.
                victims = [rng.choice(coordinators), rng.choice(compactors)]
                await asyncio.gather(*(_cycle(v, SAFETY_SECONDS + 2) for v in victims))

        await asyncio.gather(*(_writer(http, headers, model, w, rounds=25) for w in range(3)), stop_some())
        await _check(http, headers, model)
    await _maintenance_ran(pool)
    for proc in (api, *coordinators, *compactors):
        assert proc.returncode is None, f"a process died\n{proc.describe()}"


async def test_coordinators_killed_under_keyed_load_with_an_aggressive_compactor_match_the_model(
    spawn: Spawner, dsn: str, pool: CatalogPool, make_key: KeyMaker, tmp_path: Path,
) -> None:
    objects = tmp_path / "objects"

    def settings(**extra: str) -> dict[str, str]:
        return external_settings(dsn, objects, **{**MAINTENANCE, **extra})

    api = spawn.start("api", settings=settings(), name="api")
    spawn.start("compactor", settings=settings(), name="compactor", wait_ready=False)
    generation = 0

    def coordinator() -> DuckMeshProcess:
        nonlocal generation
        generation += 1
        return spawn.start("coordinator", settings=settings(coordinator_id=f"c{generation}"),
                           name=f"coordinator-{generation}")

    running = [coordinator(), coordinator()]
    model = Model()
    async with http_client(api.base_url) as http:
        headers = await _tenant(http, make_key)

        async def kill_some() -> None:
            rng = random.Random(11)
            for _ in range(6):
                await asyncio.sleep(rng.uniform(0.3, 1.2))  # after the survivor and the new one are working
                victim = running.pop(rng.randrange(len(running)))
                victim.kill()
                running.append(await asyncio.to_thread(coordinator))

        started = time.monotonic()
        await asyncio.gather(*(_writer(http, headers, model, w, rounds=30) for w in range(3)), kill_some())
        assert time.monotonic() - started < 300
        await _check(http, headers, model)
    await _maintenance_ran(pool)


@pytest.fixture(autouse=True)
def _resume_stopped_processes(spawn: Spawner) -> Any:
    """A failing assertion must not leave a SIGSTOPped process behind (teardown's SIGTERM would
    never be handled)."""
    yield
    for proc in spawn._procs:
        proc.send(signal.SIGCONT)


async def test_a_killed_coordinators_claims_are_taken_over_long_before_its_lease_ends(
    spawn: Spawner, dsn: str, pool: CatalogPool, make_key: KeyMaker, tmp_path: Path,
) -> None:
    """SIGKILL a coordinator while it holds a claim under a two-minute lease: PostgreSQL drops its
    liveness lock with its connection, and another coordinator publishes the records within
    seconds, each exactly once."""
    lease = 120

    def settings(**extra: str) -> dict[str, str]:  # each process on a port of its own
        return external_settings(dsn, tmp_path / "objects", coordinator_lease_seconds=str(lease),
                                 maintenance_gc_safety_age=str(lease * 5), **extra)

    api = spawn.start("api", settings=settings(), name="api")
    async with http_client(api.base_url) as http:
        headers = await make_key("takeover")
        await create_table(http, headers)
        last_token = 0
        caught = 0
        for attempt in range(8):
            victim = spawn.start("coordinator", settings=settings(coordinator_id=f"victim{attempt}"),
                                 name=f"victim-{attempt}")
            body = {"records": [{**r, "payload": {**r["payload"], "name": "x" * 200}}
                                for r in records(attempt * 10_000, 10_000, prefix=f"t{attempt}")]}
            response = await http.post("/v1/ingest/events", headers=headers, json=body, timeout=60)
            assert response.status_code == 200, response.text
            last_token = response.json()["max_visibility_token"]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not caught:
                async with pool.connection() as conn:
                    cur = await conn.execute("SELECT count(*) AS n FROM ingest_segment WHERE state = 'claimed'"
                                             " AND lease_owner = %s", (f"victim{attempt}",))
                    row = await cur.fetchone()
                if row and row["n"]:
                    victim.send(signal.SIGSTOP)  # frozen at once, then checked: does it still hold the claim?
                    async with pool.connection() as conn:
                        cur = await conn.execute("SELECT count(*) AS n FROM ingest_segment WHERE state = 'claimed'"
                                                 " AND lease_owner = %s", (f"victim{attempt}",))
                        row = await cur.fetchone()
                    caught = row["n"] if row else 0
                    if not caught:
                        victim.send(signal.SIGCONT)
                    break
                await asyncio.sleep(0.002)
            if caught:
                victim.kill()
                break
            victim.kill()  # it published before we caught it holding the claim: try again
        assert caught, "never caught a coordinator holding a claim"

        started = time.monotonic()
        spawn.start("coordinator", settings=settings(coordinator_id="survivor"), name="survivor")
        answer = await http.post("/v1/query", headers=headers, timeout=90, json={
            "sql": "SELECT count(*), count(DISTINCT id) FROM events", "min_visibility_token": last_token,
            "consistency_timeout_ms": 60_000})
        taken_over_in = time.monotonic() - started
        assert answer.status_code == 200, answer.text
        assert answer.json()["rows"] == [[last_token, last_token]], "every record exactly once"
        assert taken_over_in < lease / 2, f"took {taken_over_in:.1f} s: waited for the lease, not liveness"

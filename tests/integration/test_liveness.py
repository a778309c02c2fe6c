"""Fast takeover of a dead coordinator's claims: claims made under a liveness lock (a session
advisory lock on the claimant's own connection) are requeued as soon as that connection is gone,
not after the whole lease; a claimant that is alive keeps its claims until the lease ends; and a
claimant that lost its liveness but kept working can publish nothing it no longer holds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest

from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.liveness import Liveness
from duckmesh.coordinator import worker
from duckmesh.coordinator.materialize import materialize
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.errors import LeaseLost
from duckmesh.observability import metrics
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table, records, segment_states
from tests.helpers import query_ok as query

LONG_LEASE = 300.0  # far longer than any test: only liveness can explain a takeover


async def _tenant_with_pending(client: httpx.AsyncClient, make_key: KeyMaker, count: int) -> tuple[dict[str, str], int]:
    headers = await make_key()
    await create_table(client, headers)
    response = await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, count)})
    assert response.status_code == 200, response.text
    return headers, int(response.json()["max_visibility_token"])


async def _tenant_id(pool: CatalogPool) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT tenant_id FROM ingest_segment LIMIT 1")).fetchone()
    assert row is not None
    return int(row["tenant_id"])


@pytest.fixture
async def liveness(dsn: str) -> AsyncIterator[Liveness]:
    held = Liveness(dsn)
    await held.start()
    assert held.key is not None
    yield held
    await held.stop()


async def test_a_dead_claimants_segments_are_taken_over_at_once_and_published_once(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, store: RetryingObjectStore, liveness: Liveness,
) -> None:
    headers, token = await _tenant_with_pending(client, make_key, 40)
    tenant = await _tenant_id(pool)
    doomed_bus = PostgresBus(pool, None, liveness)
    claim = await doomed_bus.claim("doomed", 10_000, 1 << 30, LONG_LEASE)
    assert claim is not None and claim.record_count == 40
    survivor = Coordinator(pool, PostgresBus(pool), store, CoordinatorConfig(owner="survivor", lease_seconds=LONG_LEASE))

    await survivor.resolve_expired()
    assert await segment_states(pool, tenant) == {"claimed": 40}, "a live claimant keeps its claim"

    await liveness.stop()  # the claimant's process is gone: PostgreSQL drops its lock with the connection
    await survivor.resolve_expired()
    assert await segment_states(pool, tenant) == {"accepted": 40}, "taken over long before the lease ends"
    claimed, _ = await survivor.run_once()
    assert claimed
    assert await segment_states(pool, tenant) == {"committed": 40}

    # Had the claimant only lost its connection and carried on, its commit is refused.
    zombie = Coordinator(pool, doomed_bus, store, CoordinatorConfig(owner="doomed", lease_seconds=LONG_LEASE))
    with pytest.raises(LeaseLost):
        await doomed_bus.extend(claim, LONG_LEASE)
    await zombie.process(claim)
    answer = await query(client, headers, "SELECT count(*), count(DISTINCT id) FROM events", min_visibility_token=token)
    assert answer["rows"] == [[40, 40]], "every record exactly once"


async def test_a_claimant_whose_connection_was_cut_takes_a_new_key_and_its_old_claims_are_taken_over(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, store: RetryingObjectStore,
    liveness: Liveness, dsn: str,
) -> None:
    headers, token = await _tenant_with_pending(client, make_key, 5)
    tenant = await _tenant_id(pool)
    bus = PostgresBus(pool, None, liveness)
    claim = await bus.claim("cut", 10_000, 1 << 30, LONG_LEASE)
    assert claim is not None
    old_key = liveness.key
    with psycopg.connect(dsn, autocommit=True) as admin:
        killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                               " WHERE application_name = 'duckmesh-liveness' AND datname = current_database()")
        assert killed.fetchall() == [(True,)]
    for _ in range(100):
        if liveness.key not in (None, old_key):
            break
        await asyncio.sleep(0.1)
    assert liveness.key not in (None, old_key), "the lock is taken again under a new key"

    survivor = Coordinator(pool, PostgresBus(pool), store, CoordinatorConfig(owner="survivor", lease_seconds=LONG_LEASE))
    await survivor.resolve_expired()
    assert await segment_states(pool, tenant) == {"accepted": 5}
    await survivor.run_once()
    answer = await query(client, headers, "SELECT count(*) FROM events", min_visibility_token=token)
    assert answer["rows"] == [[5]]


async def test_claims_without_liveness_wait_for_their_lease(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, store: RetryingObjectStore,
) -> None:
    await _tenant_with_pending(client, make_key, 3)
    tenant = await _tenant_id(pool)
    claim = await PostgresBus(pool).claim("no-liveness", 10_000, 1 << 30, LONG_LEASE)
    assert claim is not None
    survivor = Coordinator(pool, PostgresBus(pool), store, CoordinatorConfig(owner="survivor"))
    await survivor.resolve_expired()
    assert await segment_states(pool, tenant) == {"claimed": 3}


async def test_a_batch_whose_lease_extension_fails_ends_visibly_and_publishes_nothing(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, store: RetryingObjectStore,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """The extender is the batch's lifeline: when an extension finds the claim gone, the batch's
    work is cancelled before it can publish, the failure is logged and counted, and the records
    are published once by whoever took the claim over."""
    headers, token = await _tenant_with_pending(client, make_key, 20)
    tenant = await _tenant_id(pool)
    release = threading.Event()

    def stalled(*args: Any) -> Any:
        release.wait(30)
        return materialize(*args)

    monkeypatch.setattr(worker, "materialize", stalled)
    failures = metrics.SNAPSHOT_PUBLISH_FAILURES.labels("lease_lost")
    before = failures._value.get()
    stalled_coordinator = Coordinator(pool, PostgresBus(pool), store, CoordinatorConfig(owner="stalled", lease_seconds=0.9))
    running = asyncio.create_task(stalled_coordinator.run_once())
    try:
        for _ in range(100):
            if await segment_states(pool, tenant) == {"claimed": 20}:
                break
            await asyncio.sleep(0.05)
        async with pool.connection() as conn:  # the claim is lost: its lease ran out and was taken over
            await conn.execute("UPDATE ingest_segment SET lease_until = clock_timestamp() - interval '1 second'"
                               " WHERE tenant_id = %s AND state = 'claimed'", (tenant,))
        survivor = Coordinator(pool, PostgresBus(pool), store, CoordinatorConfig(owner="survivor"))
        await survivor.resolve_expired()
        assert await segment_states(pool, tenant) == {"accepted": 20}
        claimed, _ = await asyncio.wait_for(running, 10)  # ends on its own while the work is still stalled
        assert claimed
    finally:
        release.set()
        running.cancel()
    assert failures._value.get() == before + 1
    assert any(r.getMessage() == "lease_extension_failed" for r in caplog.records)

    monkeypatch.setattr(worker, "materialize", materialize)
    await survivor.run_once()
    assert await segment_states(pool, tenant) == {"committed": 20}
    answer = await query(client, headers, "SELECT count(*), count(DISTINCT id) FROM events", min_visibility_token=token)
    assert answer["rows"] == [[20, 20]], "every record exactly once, all from the survivor"

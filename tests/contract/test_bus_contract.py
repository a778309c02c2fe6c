"""The IngestBus contract: every backend must pass this suite unchanged.

To add a backend, add a param to the ``contract_bus`` fixture that yields (bus, tenant_id,
table_id, publish) for it, where ``publish(steps)`` runs a snapshot commit with those steps and
returns the new tenant watermark (the commit protocol is the catalog's; the bus contributes steps).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from duckmesh.bus.base import IngestBus, NewEvent
from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog import tables, tenants
from duckmesh.catalog.commit import CommitPlan, Step, TablesLive, commit
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.notify import INGEST_CHANNEL, Listener
from duckmesh.domain import Op, SnapshotKind, TableId, TenantId
from duckmesh.errors import CommitConflict, IdempotencyKeyReused, LeaseLost, NothingToCommit, TableNotFound
from duckmesh.schema import TableSchema
from duckmesh.tables.lifecycle import drop_table

Publisher = Callable[[list[Step]], Awaitable[int]]


def event(key: str, value: int = 0, op: Op = Op.INSERT) -> NewEvent:
    payload = f'{{"id":{value}}}'
    return NewEvent(key, op, payload, hashlib.sha256(payload.encode()).digest(), datetime.now(UTC))


@pytest.fixture(params=["postgres"])
async def contract_bus(
    request: pytest.FixtureRequest, pool: CatalogPool, dsn: str
) -> AsyncIterator[tuple[IngestBus, TenantId, TableId, Publisher]]:
    assert request.param == "postgres"
    listener = Listener(dsn, (INGEST_CHANNEL,))
    await listener.start()
    async with pool.connection() as conn:
        tenant = await tenants.create_tenant(conn, "contract")
    await commit(pool, CommitPlan(tenant.tenant_id, SnapshotKind.SCHEMA, "t", requires=[tables.CreateTable(
        "t", TableSchema.build([{"name": "id", "type": "int64"}], ["id"]), "backward")]))
    async with pool.connection() as conn:
        table = await tables.get_table(conn, tenant.tenant_id, "t")

    async def publish(steps: list[Step]) -> int:
        snapshot = await commit(pool, CommitPlan(tenant.tenant_id, SnapshotKind.INGEST, "t", requires=steps))
        return snapshot.max_visibility_token

    yield PostgresBus(pool, listener), tenant.tenant_id, table.table_id, publish
    await listener.stop()


async def test_publish_assigns_consecutive_tokens_in_request_order(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    first = await bus.publish(tenant, table, 1, [event("a"), event("b"), event("c")])
    second = await bus.publish(tenant, table, 1, [event("d")])
    assert first.tokens == [1, 2, 3] and second.tokens == [4]
    assert first.accepted_count == 3 and first.duplicate_count == 0


async def test_duplicate_key_returns_the_original_token_and_stores_nothing(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    await bus.publish(tenant, table, 1, [event("a", 1), event("b", 2)])
    again = await bus.publish(tenant, table, 1, [event("b", 2), event("c", 3), event("c", 3)])
    assert again.tokens == [2, 3, 3]
    assert again.duplicate == [True, False, True]
    claim = await bus.claim("w", 100, 1 << 20, 30)
    assert claim is not None and len(claim.events) == 3


async def test_same_key_with_another_payload_is_refused_and_nothing_is_stored(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    await bus.publish(tenant, table, 1, [event("a", 1)])
    with pytest.raises(IdempotencyKeyReused) as refused:
        await bus.publish(tenant, table, 1, [event("new", 5), event("a", 2)])
    assert refused.value.context["conflicts"] == [1]
    with pytest.raises(IdempotencyKeyReused):
        await bus.publish(tenant, table, 1, [event("a", 1, Op.UPSERT)])
    later = await bus.publish(tenant, table, 1, [event("new", 5)])
    assert later.tokens == [2], "the refused request consumed no token"


async def test_a_dropped_table_accepts_no_event(contract_bus: Any, pool: CatalogPool) -> None:
    bus, tenant, table, _ = contract_bus
    await drop_table(pool, bus, tenant, "t", "test")
    with pytest.raises(TableNotFound):
        await bus.publish(tenant, table, 1, [event("late")])
    assert await bus.claim("w", 10, 1 << 20, 30) is None


async def test_claims_never_hand_one_event_to_two_workers(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    await bus.publish(tenant, table, 1, [event(f"k{i}", i) for i in range(200)])
    claims = await asyncio.gather(*(bus.claim(f"w{i}", 30, 1 << 20, 30) for i in range(10)))
    ids = [e.event_id for c in claims if c for e in c.events]
    assert len(ids) == len(set(ids)) == 200


async def test_claim_respects_byte_budget_but_takes_at_least_one_event(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    await bus.publish(tenant, table, 1, [event(f"k{i}", i) for i in range(10)])
    tiny = await bus.claim("w", 100, 1, 30)
    assert tiny is not None and len(tiny.events) == 1
    some = await bus.claim("w", 100, 3 * len('{"id":1}'), 30)
    assert some is not None and len(some.events) == 3


async def test_no_work_means_no_claim(contract_bus: Any) -> None:
    bus, *_ = contract_bus
    assert await bus.claim("w", 10, 1 << 20, 30) is None


async def test_the_commit_step_commits_the_claims_events_and_moves_the_watermark(contract_bus: Any) -> None:
    bus, tenant, table, publish = contract_bus
    await bus.publish(tenant, table, 1, [event("a"), event("b")])
    claim = await bus.claim("w", 10, 1 << 20, 30)
    assert await publish([]) == 0, "nothing resolved yet"
    assert await publish([bus.commit_step(claim, tenant, [e.event_id for e in claim.events])]) == 2
    lag = await bus.lag(tenant)
    assert lag["claimed_events"] == 0 and lag["pending_events"] == 0


async def test_a_commit_that_fails_after_the_claim_step_leaves_the_events_claimed(contract_bus: Any) -> None:
    bus, tenant, table, publish = contract_bus
    await bus.publish(tenant, table, 1, [event("a")])
    claim = await bus.claim("w", 10, 1 << 20, 30)

    with pytest.raises(CommitConflict):  # a later precondition refuses: nothing of the commit stays
        await publish([bus.commit_step(claim, tenant, [claim.events[0].event_id]), TablesLive([TableId(999_999)])])
    assert await publish([]) == 0
    assert (await bus.lag(tenant))["claimed_events"] == 1
    assert await publish([bus.commit_step(claim, tenant, [claim.events[0].event_id])]) == 1


async def test_expired_lease_is_taken_over_and_the_old_owner_can_neither_commit_nor_extend(contract_bus: Any) -> None:
    bus, tenant, table, publish = contract_bus
    await bus.publish(tenant, table, 1, [event("a"), event("b")])
    old = await bus.claim("dead", 10, 1 << 20, 0.05)
    await asyncio.sleep(0.1)
    assert await bus.requeue_expired(5) == []
    new = await bus.claim("alive", 10, 1 << 20, 30)
    assert new is not None and {e.event_id for e in new.events} == {e.event_id for e in old.events}
    with pytest.raises(LeaseLost):
        await publish([bus.commit_step(old, tenant, [e.event_id for e in old.events])])
    with pytest.raises(LeaseLost):
        await bus.extend(old, 30)
    assert await publish([bus.commit_step(new, tenant, [e.event_id for e in new.events])]) == 2


async def test_a_claim_whose_lease_ran_out_cannot_commit_even_before_anyone_takes_it_over(contract_bus: Any) -> None:
    bus, tenant, table, publish = contract_bus
    await bus.publish(tenant, table, 1, [event("a")])
    stalled = await bus.claim("stalled", 10, 1 << 20, 0.05)
    await asyncio.sleep(0.1)  # nobody requeued it yet: the database clock alone must refuse the commit
    with pytest.raises(LeaseLost):
        await publish([bus.commit_step(stalled, tenant, [stalled.events[0].event_id])])
    with pytest.raises(LeaseLost):
        await publish([bus.fail_step(stalled, [stalled.events[0].event_id], "late")])
    assert await publish([]) == 0


async def test_the_commit_step_must_cover_every_event_the_claim_still_holds_for_the_tenant(contract_bus: Any) -> None:
    bus, tenant, table, publish = contract_bus
    await bus.publish(tenant, table, 1, [event("a"), event("b")])
    claim = await bus.claim("w", 10, 1 << 20, 30)
    with pytest.raises(LeaseLost):
        await publish([bus.commit_step(claim, tenant, [claim.events[0].event_id])])
    lag = await bus.lag(tenant)
    assert lag["claimed_events"] == 2, "the refused commit changed nothing"


async def test_extend_keeps_a_live_claim(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    await bus.publish(tenant, table, 1, [event("a")])
    claim = await bus.claim("w", 10, 1 << 20, 0.2)
    before = claim.lease_until
    await bus.extend(claim, 30)
    assert claim.lease_until > before
    await asyncio.sleep(0.3)
    assert await bus.requeue_expired(5) == []
    assert await bus.claim("other", 10, 1 << 20, 30) is None


async def test_extend_counts_only_the_events_the_claim_still_holds(contract_bus: Any) -> None:
    bus, tenant, table, publish = contract_bus
    await bus.publish(tenant, table, 1, [event("a"), event("b"), event("c")])
    claim = await bus.claim("w", 10, 1 << 20, 0.5)
    first, second, third = claim.events
    await bus.release(claim, [first.event_id])
    await publish([bus.fail_step(claim, [second.event_id], "poison")])
    claim.let_go([second.event_id])
    await bus.extend(claim, 30)  # one event left in hand: that is no lost lease
    assert claim.held == {third.event_id}
    await asyncio.sleep(0.6)
    assert await bus.claim("other", 10, 1 << 20, 30) is not None  # the released one
    await bus.extend(claim, 30)
    watermark = await publish([bus.commit_step(claim, tenant, [third.event_id])])
    assert watermark == 0, "token 1 went back to the pool and is claimed again: the watermark stays below it"


async def test_nack_gives_events_back_for_another_attempt(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    await bus.publish(tenant, table, 1, [event("poison")])
    for attempt in (1, 2, 3):
        claim = await bus.claim("w", 10, 1 << 20, 30)
        assert claim.events[0].attempts == attempt
        await bus.nack(claim, [claim.events[0].event_id], "cannot materialize")
        assert not claim.held
    assert (await bus.lag(tenant))["pending_events"] == 1


async def test_a_failed_event_counts_as_resolved_in_the_commit_that_fails_it(contract_bus: Any) -> None:
    bus, tenant, table, publish = contract_bus
    await bus.publish(tenant, table, 1, [event("a"), event("b")])
    claim = await bus.claim("w", 10, 1 << 20, 30)
    first, second = claim.events
    assert await publish([bus.fail_step(claim, [first.event_id], "bad"),
                          bus.commit_step(claim, tenant, [second.event_id])]) == 2
    lag = await bus.lag(tenant)
    assert lag["failed_events"] == 1 and lag["pending_events"] == 0
    assert await bus.failed_tokens(tenant, [1, 2]) == [1]


async def test_expired_events_out_of_attempts_are_failed_only_by_a_commit(contract_bus: Any, pool: CatalogPool) -> None:
    bus, tenant, table, _ = contract_bus
    await bus.publish(tenant, table, 1, [event("a"), event("b")])
    await bus.claim("crashed", 10, 1 << 20, 0.05)
    await asyncio.sleep(0.1)
    assert await bus.requeue_expired(1) == [tenant], "out of attempts: left for a failing commit"
    assert (await bus.lag(tenant))["claimed_events"] == 2
    plan = CommitPlan(tenant, SnapshotKind.INGEST, "t", effects=[bus.fail_exhausted_step(tenant, 1)],
                      skip_if_nothing_resolved=True)
    assert (await commit(pool, plan)).max_visibility_token == 2
    with pytest.raises(NothingToCommit):
        await commit(pool, plan)
    assert (await bus.lag(tenant))["failed_events"] == 2


async def test_release_does_not_use_up_attempts(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    await bus.publish(tenant, table, 1, [event("a")])
    for _ in range(10):
        claim = await bus.claim("w", 10, 1 << 20, 30)
        await bus.release(claim, [e.event_id for e in claim.events])
    claim = await bus.claim("w", 10, 1 << 20, 30)
    assert claim.events[0].attempts == 1


async def test_wait_for_work_wakes_on_publish(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    await bus.wait_for_work(0.05)  # absorb the wake-up of connecting
    waiter = asyncio.create_task(bus.wait_for_work(30))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await bus.publish(tenant, table, 1, [event("a")])
    await asyncio.wait_for(waiter, 5)

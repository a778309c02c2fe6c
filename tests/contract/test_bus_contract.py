"""The IngestBus contract: every backend must pass this suite unchanged.

To add a backend, add a param to the ``contract_bus`` fixture that yields (bus, tenant_id,
table_id, run_in_tx) for it.
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
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.notify import INGEST_CHANNEL, Listener
from duckmesh.domain import Op, TableId, TenantId
from duckmesh.errors import IdempotencyKeyReused, LeaseLost
from duckmesh.schema import TableSchema

TxRunner = Callable[[Callable[[Any], Awaitable[Any]]], Awaitable[Any]]


def event(key: str, value: int = 0, op: Op = Op.INSERT) -> NewEvent:
    payload = f'{{"id":{value}}}'
    return NewEvent(key, op, payload, hashlib.sha256(payload.encode()).digest(), datetime.now(UTC))


@pytest.fixture(params=["postgres"])
async def contract_bus(
    request: pytest.FixtureRequest, pool: CatalogPool, dsn: str
) -> AsyncIterator[tuple[IngestBus, TenantId, TableId, TxRunner]]:
    assert request.param == "postgres"
    listener = Listener(dsn, (INGEST_CHANNEL,))
    await listener.start()
    async with pool.connection() as conn:
        tenant = await tenants.create_tenant(conn, "contract")
        table = await tables.create_table(
            conn, tenant.tenant_id, "t", TableSchema.build([{"name": "id", "type": "int64"}], ["id"]), "backward"
        )

    async def in_tx(fn: Callable[[Any], Awaitable[Any]]) -> Any:
        async with pool.transaction() as tx:
            return await fn(tx)

    yield PostgresBus(pool, listener), tenant.tenant_id, table.table_id, in_tx
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


async def test_ack_inside_a_transaction_commits_events_and_moves_the_watermark(contract_bus: Any) -> None:
    bus, tenant, table, in_tx = contract_bus
    await bus.publish(tenant, table, 1, [event("a"), event("b")])
    claim = await bus.claim("w", 10, 1 << 20, 30)

    async def before(tx: Any) -> Any:
        return await bus.resolved_watermarks(tx, tenant)

    assert (await in_tx(before)).tenant == 0

    async def ack(tx: Any) -> Any:
        await bus.ack(tx, claim, [e.event_id for e in claim.events], 1)
        return await bus.resolved_watermarks(tx, tenant)

    marks = await in_tx(ack)
    assert marks.tenant == 2 and marks.tables[table] == 2 and marks.issued == 2


async def test_ack_rolled_back_leaves_events_claimed(contract_bus: Any) -> None:
    bus, tenant, table, in_tx = contract_bus
    await bus.publish(tenant, table, 1, [event("a")])
    claim = await bus.claim("w", 10, 1 << 20, 30)

    async def ack_then_fail(tx: Any) -> None:
        await bus.ack(tx, claim, [claim.events[0].event_id], 1)
        raise RuntimeError("publication failed")

    with pytest.raises(RuntimeError):
        await in_tx(ack_then_fail)
    marks = await in_tx(lambda tx: bus.resolved_watermarks(tx, tenant))
    assert marks.tenant == 0
    lag = await bus.lag(tenant)
    assert lag["claimed_events"] == 1


async def test_expired_lease_is_taken_over_and_the_old_owner_cannot_ack(contract_bus: Any) -> None:
    bus, tenant, table, in_tx = contract_bus
    await bus.publish(tenant, table, 1, [event("a"), event("b")])
    old = await bus.claim("dead", 10, 1 << 20, 0.05)
    await asyncio.sleep(0.1)
    assert await bus.requeue_expired(5) == []
    new = await bus.claim("alive", 10, 1 << 20, 30)
    assert new is not None and {e.event_id for e in new.events} == {e.event_id for e in old.events}
    with pytest.raises(LeaseLost):
        await in_tx(lambda tx: bus.ack(tx, old, [e.event_id for e in old.events], 1))
    with pytest.raises(LeaseLost):
        await bus.extend(old, 30)
    await in_tx(lambda tx: bus.ack(tx, new, [e.event_id for e in new.events], 2))


async def test_ack_must_cover_every_event_the_claim_still_holds_for_the_tenant(contract_bus: Any) -> None:
    bus, tenant, table, in_tx = contract_bus
    await bus.publish(tenant, table, 1, [event("a"), event("b")])
    claim = await bus.claim("w", 10, 1 << 20, 30)
    with pytest.raises(LeaseLost):
        await in_tx(lambda tx: bus.ack(tx, claim, [claim.events[0].event_id], 1))
    lag = await bus.lag(tenant)
    assert lag["claimed_events"] == 2, "the refused ack changed nothing"


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


async def test_nack_returns_events_until_attempts_run_out_then_dead_letters(contract_bus: Any) -> None:
    bus, tenant, table, in_tx = contract_bus
    await bus.publish(tenant, table, 1, [event("poison"), event("fine")])
    failed = []
    for _ in range(3):
        claim = await bus.claim("w", 10, 1 << 20, 30)
        poison = [e.event_id for e in claim.events if e.token == 1]
        failed = await bus.nack(claim, poison, "cannot materialize", 3)
        await bus.release(claim, [e.event_id for e in claim.events if e.token != 1])
    assert [f.token for f in failed] == [1] and failed[0].reason == "cannot materialize"
    marks = await in_tx(lambda tx: bus.resolved_watermarks(tx, tenant))
    assert marks.tenant == 1, "token 1 failed (resolved), token 2 is still pending"
    lag = await bus.lag(tenant)
    assert lag["failed_events"] == 1 and lag["pending_events"] == 1


async def test_release_does_not_use_up_attempts(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    await bus.publish(tenant, table, 1, [event("a")])
    for _ in range(10):
        claim = await bus.claim("w", 10, 1 << 20, 30)
        await bus.release(claim, [e.event_id for e in claim.events])
    claim = await bus.claim("w", 10, 1 << 20, 30)
    assert claim.events[0].attempts == 1


async def test_failed_events_count_as_resolved_for_the_watermark(contract_bus: Any) -> None:
    bus, tenant, table, in_tx = contract_bus
    await bus.publish(tenant, table, 1, [event("a"), event("b")])
    claim = await bus.claim("w", 10, 1 << 20, 30)
    first, second = claim.events
    await bus.nack(claim, [first.event_id], "bad", 1)
    await in_tx(lambda tx: bus.ack(tx, claim, [second.event_id], 1))
    marks = await in_tx(lambda tx: bus.resolved_watermarks(tx, tenant))
    assert marks.tenant == 2


async def test_wait_for_work_wakes_on_publish(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    await bus.wait_for_work(0.05)  # absorb the wake-up of connecting
    waiter = asyncio.create_task(bus.wait_for_work(30))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await bus.publish(tenant, table, 1, [event("a")])
    await asyncio.wait_for(waiter, 5)

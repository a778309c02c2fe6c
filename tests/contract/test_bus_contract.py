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

import pyarrow as pa
import pytest

from duckmesh.bus.base import DeadLetter, IngestBus, NewSegment, PublishOutcome, encode_segment
from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog import tables, tenants
from duckmesh.catalog.commit import CommitPlan, Step, TablesLive, commit
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.notify import INGEST_CHANNEL, Listener
from duckmesh.domain import SegmentId, SnapshotKind, TableId, TenantId
from duckmesh.errors import (
    CommitConflict,
    IdempotencyKeyReused,
    LeaseLost,
    NothingToCommit,
    SchemaChanged,
    TableNotFound,
)
from duckmesh.schema import TableSchema
from duckmesh.tables.lifecycle import drop_table

Publisher = Callable[[list[Step]], Awaitable[int]]


def segment(
    table: TableId, keys: list[str | None], values: list[int] | None = None, op: str = "insert",
    request_key: str | None = None, body: bytes | None = None, schema_version: int = 1,
) -> NewSegment:
    """One request's records: ``id`` values (default: one per key), an op, keys; the digest is what
    the ingest service derives from the canonical record."""
    values = values if values is not None else list(range(len(keys)))
    now = datetime.now(UTC)
    records = pa.table({"id": pa.array(values, pa.int64()), "_dm_op": [op] * len(values),
                        "_dm_event_time": pa.array([now] * len(values), pa.timestamp("us", tz="UTC")),
                        "_dm_key": pa.array(keys, pa.string())})
    digests = [hashlib.blake2b(f"{op}:{v}".encode(), digest_size=8).digest() for v in values]
    return NewSegment(table, schema_version, encode_segment(records), len(values), keys, digests, request_key,
                      hashlib.sha256(body).digest() if body is not None else None)


async def accept(bus: IngestBus, tenant: TenantId, *segments: NewSegment) -> list[PublishOutcome]:
    """Publish and expect every request accepted."""
    outcomes = await bus.publish(tenant, segments)
    assert all(isinstance(o, PublishOutcome) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, PublishOutcome)]


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


def letter(claimed: Any, token: int) -> DeadLetter:
    return DeadLetter(claimed.table_id, claimed.segment_id, token, token, None, "insert", '{"id": 0}', 1,
                      datetime.now(UTC), claimed.attempts, "poison", None)


async def test_a_group_of_requests_gets_consecutive_tokens_in_request_order(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    first, second = await accept(bus, tenant, segment(table, ["a", "b", "c"]), segment(table, ["d"], [9]))
    third, = await accept(bus, tenant, segment(table, [None, None]))
    assert first.tokens == [1, 2, 3] and second.tokens == [4] and third.tokens == [5, 6]
    assert first.accepted_count == 3 and first.duplicate_count == 0


async def test_duplicate_keys_return_the_original_tokens_and_store_nothing_again(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    await accept(bus, tenant, segment(table, ["a", "b"], [1, 2]))
    again, = await accept(bus, tenant, segment(table, ["b", "c", "c"], [2, 3, 3]))
    assert again.tokens == [2, 3, 3] and again.duplicate == [True, False, True]
    claim = await bus.claim("w", 100, 1 << 20, 30)
    assert claim is not None and sum(s.record_count for s in claim.segments) == 3
    assert [s.records().column("id").to_pylist() for s in claim.segments] == [[1, 2], [3]], "only fresh records"


async def test_a_key_reused_with_another_record_refuses_that_request_alone(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    await accept(bus, tenant, segment(table, ["a"], [1]))
    refused, fine = await bus.publish(tenant, [segment(table, ["new", "a"], [5, 2]), segment(table, ["x"], [7])])
    assert isinstance(refused, IdempotencyKeyReused) and refused.context["conflicts"] == [1]
    assert isinstance(fine, PublishOutcome) and fine.tokens == [2], "the refused request consumed no token"
    other_op, = await bus.publish(tenant, [segment(table, ["a"], [1], op="upsert")])
    assert isinstance(other_op, IdempotencyKeyReused)


async def test_concurrent_requests_with_one_key_accept_it_exactly_once(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    outcomes = await asyncio.gather(*(bus.publish(tenant, [segment(table, ["same"], [v])]) for v in range(20)))
    accepted = [o for [o] in outcomes if isinstance(o, PublishOutcome) and o.accepted_count]
    assert len(accepted) == 1 and all(isinstance(o, IdempotencyKeyReused) for [o] in outcomes if o is not accepted[0])


async def test_a_repeated_request_key_returns_the_first_receipt_and_another_body_is_refused(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    first, = await accept(bus, tenant, segment(table, [None] * 3, request_key="req-1", body=b"body"))
    again, twin = await accept(bus, tenant, segment(table, [None] * 3, request_key="req-1", body=b"body"),
                               segment(table, [None] * 3, request_key="req-1", body=b"body"))
    assert first.tokens == [1, 2, 3]
    assert again.earlier_receipt == twin.earlier_receipt == {
        "accepted_count": 3, "duplicate_count": 0, "max_visibility_token": 3, "schema_version": 1, "status": "accepted"}
    other, = await bus.publish(tenant, [segment(table, [None], request_key="req-1", body=b"other")])
    assert isinstance(other, IdempotencyKeyReused)
    claim = await bus.claim("w", 100, 1 << 20, 30)
    assert claim is not None and claim.record_count == 3, "stored once"


async def test_a_dropped_table_or_a_changed_schema_accepts_nothing(contract_bus: Any, pool: CatalogPool) -> None:
    bus, tenant, table, _ = contract_bus
    changed, = await bus.publish(tenant, [segment(table, ["a"], schema_version=7)])
    assert isinstance(changed, SchemaChanged)
    await drop_table(pool, bus, tenant, "t", "test")
    dropped, = await bus.publish(tenant, [segment(table, ["late"])])
    assert isinstance(dropped, TableNotFound)
    assert await bus.claim("w", 10, 1 << 20, 30) is None


async def test_claims_never_hand_one_segment_to_two_workers(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    for i in range(50):
        await accept(bus, tenant, segment(table, [f"k{i}-{j}" for j in range(4)]))
    ids: list[SegmentId] = []
    for _ in range(10):  # rounds of concurrent claims until the bus is empty
        claims = await asyncio.gather(*(bus.claim(f"w{i}", 20, 1 << 20, 30) for i in range(10)))
        ids += [s.segment_id for c in claims if c for s in c.segments]
    assert len(ids) == len(set(ids)) == 50


async def test_a_claim_respects_its_record_budget_but_takes_at_least_one_segment(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    await accept(bus, tenant, segment(table, ["a", "b", "c"]))
    await accept(bus, tenant, segment(table, ["d", "e"]))
    await accept(bus, tenant, segment(table, ["f"]))
    tiny = await bus.claim("w", 1, 1 << 20, 30)
    assert tiny is not None and [s.record_count for s in tiny.segments] == [3]
    some = await bus.claim("w", 3, 1 << 20, 30)
    assert some is not None and [s.record_count for s in some.segments] == [2, 1]


async def test_no_work_means_no_claim(contract_bus: Any) -> None:
    bus, *_ = contract_bus
    assert await bus.claim("w", 10, 1 << 20, 30) is None


async def test_the_commit_step_commits_the_claims_segments_and_moves_the_watermark(contract_bus: Any) -> None:
    bus, tenant, table, publish = contract_bus
    await accept(bus, tenant, segment(table, ["a", "b"]))
    claim = await bus.claim("w", 10, 1 << 20, 30)
    assert await publish([]) == 0, "nothing resolved yet"
    assert await publish([bus.commit_step(claim, tenant, [s.segment_id for s in claim.segments])]) == 2
    lag = await bus.lag(tenant)
    assert lag["claimed_events"] == 0 and lag["pending_events"] == 0


async def test_a_commit_that_fails_after_the_claim_step_leaves_the_segments_claimed(contract_bus: Any) -> None:
    bus, tenant, table, publish = contract_bus
    await accept(bus, tenant, segment(table, ["a"]))
    claim = await bus.claim("w", 10, 1 << 20, 30)
    ids = [s.segment_id for s in claim.segments]

    with pytest.raises(CommitConflict):  # a later precondition refuses: nothing of the commit stays
        await publish([bus.commit_step(claim, tenant, ids), TablesLive([TableId(999_999)])])
    assert await publish([]) == 0
    assert (await bus.lag(tenant))["claimed_events"] == 1
    assert await publish([bus.commit_step(claim, tenant, ids)]) == 1


async def test_an_expired_lease_is_taken_over_and_the_old_owner_can_neither_commit_nor_extend(
    contract_bus: Any,
) -> None:
    bus, tenant, table, publish = contract_bus
    await accept(bus, tenant, segment(table, ["a", "b"]))
    old = await bus.claim("dead", 10, 1 << 20, 0.05)
    await asyncio.sleep(0.1)
    assert await bus.requeue_expired(5) == []
    new = await bus.claim("alive", 10, 1 << 20, 30)
    assert new is not None and {s.segment_id for s in new.segments} == {s.segment_id for s in old.segments}
    with pytest.raises(LeaseLost):
        await publish([bus.commit_step(old, tenant, [s.segment_id for s in old.segments])])
    with pytest.raises(LeaseLost):
        await bus.extend(old, 30)
    assert await publish([bus.commit_step(new, tenant, [s.segment_id for s in new.segments])]) == 2


async def test_a_claim_whose_lease_ran_out_cannot_commit_even_before_anyone_takes_it_over(contract_bus: Any) -> None:
    bus, tenant, table, publish = contract_bus
    await accept(bus, tenant, segment(table, ["a"]))
    stalled = await bus.claim("stalled", 10, 1 << 20, 0.05)
    await asyncio.sleep(0.1)  # nobody requeued it yet: the database clock alone must refuse the commit
    ids = [s.segment_id for s in stalled.segments]
    with pytest.raises(LeaseLost):
        await publish([bus.commit_step(stalled, tenant, ids)])
    with pytest.raises(LeaseLost):
        await publish([bus.fail_step(stalled, ids, "late")])
    assert await publish([]) == 0


async def test_the_commit_step_must_cover_every_segment_the_claim_still_holds_for_the_tenant(
    contract_bus: Any,
) -> None:
    bus, tenant, table, publish = contract_bus
    await accept(bus, tenant, segment(table, ["a"]), segment(table, ["b"]))
    claim = await bus.claim("w", 10, 1 << 20, 30)
    with pytest.raises(LeaseLost):
        await publish([bus.commit_step(claim, tenant, [claim.segments[0].segment_id])])
    assert (await bus.lag(tenant))["claimed_events"] == 2, "the refused commit changed nothing"


async def test_extend_keeps_a_live_claim(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    await accept(bus, tenant, segment(table, ["a"]))
    claim = await bus.claim("w", 10, 1 << 20, 0.2)
    before = claim.lease_until
    await bus.extend(claim, 30)
    assert claim.lease_until > before
    await asyncio.sleep(0.3)
    assert await bus.requeue_expired(5) == []
    assert await bus.claim("other", 10, 1 << 20, 30) is None


async def test_extend_counts_only_the_segments_the_claim_still_holds(contract_bus: Any) -> None:
    bus, tenant, table, publish = contract_bus
    await accept(bus, tenant, segment(table, ["a"]), segment(table, ["b"]), segment(table, ["c"]))
    claim = await bus.claim("w", 10, 1 << 20, 0.5)
    first, second, third = claim.segments
    await bus.release(claim, [first.segment_id])
    await publish([bus.fail_step(claim, [second.segment_id], "poison"), bus.dead_letter_step([letter(second, 2)])])
    claim.let_go([second.segment_id])
    await bus.extend(claim, 30)  # one segment left in hand: that is no lost lease
    assert claim.held == {third.segment_id}
    await asyncio.sleep(0.6)
    assert await bus.claim("other", 10, 1 << 20, 30) is not None  # the released one
    await bus.extend(claim, 30)
    watermark = await publish([bus.commit_step(claim, tenant, [third.segment_id])])
    assert watermark == 0, "token 1 went back to the pool and is claimed again: the watermark stays below it"


async def test_dead_lettered_records_count_as_resolved_in_the_commit_that_writes_them(contract_bus: Any) -> None:
    bus, tenant, table, publish = contract_bus
    await accept(bus, tenant, segment(table, ["a", "b"]))
    claim = await bus.claim("w", 10, 1 << 20, 30)
    claimed = claim.segments[0]
    assert await publish([bus.commit_step(claim, tenant, [claimed.segment_id]),
                          bus.dead_letter_step([letter(claimed, 1)])]) == 2
    lag = await bus.lag(tenant)
    assert lag["failed_events"] == 1 and lag["pending_events"] == 0
    assert await bus.failed_tokens(tenant, [1, 2]) == [1]


async def test_expired_segments_out_of_attempts_are_failed_only_by_a_commit(contract_bus: Any, pool: CatalogPool) -> None:
    bus, tenant, table, _ = contract_bus
    await accept(bus, tenant, segment(table, ["a", "b"]))
    await bus.claim("crashed", 10, 1 << 20, 0.05)
    await asyncio.sleep(0.1)
    assert await bus.requeue_expired(1) == [tenant], "out of attempts: left for a failing commit"
    assert (await bus.lag(tenant))["claimed_events"] == 2
    exhausted = await bus.claim_exhausted("rescuer", tenant, 1, 30)
    assert exhausted is not None and exhausted.record_count == 2
    ids = [s.segment_id for s in exhausted.segments]
    plan = CommitPlan(tenant, SnapshotKind.INGEST, "t", skip_if_nothing_resolved=True, effects=[
        bus.dead_letter_step([letter(exhausted.segments[0], t) for t in (1, 2)]),
        bus.fail_step(exhausted, ids, "lease expired")])
    assert (await commit(pool, plan)).max_visibility_token == 2
    with pytest.raises(NothingToCommit):
        await commit(pool, CommitPlan(tenant, SnapshotKind.INGEST, "t", skip_if_nothing_resolved=True))
    assert (await bus.lag(tenant))["failed_events"] == 2


async def test_release_does_not_use_up_attempts(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    await accept(bus, tenant, segment(table, ["a"]))
    for _ in range(10):
        claim = await bus.claim("w", 10, 1 << 20, 30)
        await bus.release(claim, [s.segment_id for s in claim.segments])
    claim = await bus.claim("w", 10, 1 << 20, 30)
    assert claim.segments[0].attempts == 1


async def test_wait_for_work_wakes_on_publish(contract_bus: Any) -> None:
    bus, tenant, table, _ = contract_bus
    await bus.wait_for_work(0.05)  # absorb the wake-up of connecting
    waiter = asyncio.create_task(bus.wait_for_work(30))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    generation = bus.work_generation()
    await accept(bus, tenant, segment(table, ["a"]))
    await asyncio.wait_for(waiter, 5)
    assert bus.work_generation() > generation


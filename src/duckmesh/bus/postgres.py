"""The PostgreSQL ingest bus: events live in ``ingest_event`` in the catalog database.

Claims use ``FOR UPDATE SKIP LOCKED`` so coordinators never block each other; new work is
announced with NOTIFY in the accepting transaction (delivered on commit). Tokens come from the
catalog's counter (``catalog/tokens.py``); events are resolved only inside snapshot commits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from duckmesh.bus.base import Claim, ClaimedEvent, NewEvent, PublishOutcome
from duckmesh.catalog import tokens
from duckmesh.catalog.commit import CommitContext, Step
from duckmesh.catalog.db import AsyncConn, CatalogPool
from duckmesh.catalog.notify import INGEST_CHANNEL, Listener
from duckmesh.domain import EventId, Op, TableId, TenantId, VisibilityToken
from duckmesh.errors import IdempotencyKeyReused, LeaseLost

_COPY_EVENTS = (
    "COPY ingest_event (tenant_id, table_id, idempotency_key, op, payload, payload_hash, payload_bytes,"
    " schema_version, event_time, visibility_token, trace_id) FROM STDIN"
)

_CLAIM = """
WITH picked AS (
    SELECT event_id, payload_bytes FROM ingest_event
    WHERE state = 'accepted' ORDER BY event_id LIMIT %(max_events)s FOR UPDATE SKIP LOCKED
), sized AS (
    SELECT event_id, sum(payload_bytes) OVER (ORDER BY event_id) AS running FROM picked
), chosen AS (
    SELECT event_id FROM sized WHERE running <= %(max_bytes)s OR event_id = (SELECT min(event_id) FROM sized)
)
UPDATE ingest_event e
SET state = 'claimed', lease_owner = %(owner)s, claim_id = %(claim_id)s, attempts = e.attempts + 1,
    lease_until = clock_timestamp() + make_interval(secs => %(lease)s)
FROM chosen c WHERE e.event_id = c.event_id
RETURNING e.event_id, e.tenant_id, e.table_id, e.visibility_token, e.version_token, e.op, e.payload::text AS payload,
          e.schema_version, e.event_time, e.attempts, e.trace_id, e.lease_until, e.ingested_at
"""

# Held by the claim: claimed by it, by its owner, under a lease the database clock says is live.
_HELD = (
    "claim_id = %(claim)s AND state = 'claimed' AND lease_owner = %(owner)s AND lease_until > clock_timestamp()"
)


class PostgresBus:
    def __init__(self, pool: CatalogPool, listener: Listener | None = None) -> None:
        self._pool = pool
        self._listener = listener
        self._seen_generation = -1

    async def publish(
        self,
        tenant_id: TenantId,
        table_id: TableId,
        schema_version: int,
        events: Sequence[NewEvent],
        trace_id: str | None = None,
    ) -> PublishOutcome:
        keys = [e.idempotency_key for e in events]
        async with self._pool.transaction() as tx:
            # The counter row lock serializes accepting transactions of this tenant: tokens are
            # assigned and become visible in commit order, and concurrent retries of one key see
            # each other's committed rows. The table row is key-share locked: no write is accepted
            # into a table being dropped.
            next_token = await tokens.begin_accept(tx, tenant_id, table_id)
            # One index probe per key, whatever plan PostgreSQL caches for the prepared statement
            # (a generic plan for "= ANY(array)" scans every key of the table, under the lock).
            cur = await tx.execute(
                "SELECT e.idempotency_key, e.op, e.payload_hash, e.visibility_token"
                " FROM unnest(%s::text[]) AS k(key) CROSS JOIN LATERAL ("
                "   SELECT idempotency_key, op, payload_hash, visibility_token FROM ingest_event"
                "   WHERE tenant_id = %s AND table_id = %s AND idempotency_key = k.key LIMIT 1) e",
                (keys, tenant_id, table_id),
            )
            known: dict[str, tuple[str, bytes, int]] = {
                r["idempotency_key"]: (r["op"], bytes(r["payload_hash"]), r["visibility_token"])
                for r in await cur.fetchall()
            }
            assigned, duplicate, fresh, conflicts = _assign(events, known, next_token)
            if conflicts:
                raise IdempotencyKeyReused(
                    "idempotency key reused with a different op or payload", conflicts=conflicts
                )
            if fresh:
                async with tx.cursor().copy(_COPY_EVENTS) as copy:
                    for index in fresh:
                        event = events[index]
                        await copy.write_row((
                            tenant_id, table_id, event.idempotency_key, event.op.value, event.payload_json,
                            event.payload_hash, len(event.payload_json), schema_version, event.event_time,
                            assigned[index], trace_id,
                        ))
                await tokens.advance_counter(tx, tenant_id, next_token + len(fresh))
                await tx.execute("SELECT pg_notify(%s, '')", (INGEST_CHANNEL,))
        return PublishOutcome([VisibilityToken(t) for t in assigned], duplicate)

    async def claim(self, owner: str, max_events: int, max_bytes: int, lease_seconds: float) -> Claim | None:
        async with self._pool.transaction() as tx:
            cur = await tx.execute(
                "INSERT INTO ingest_claim_batch (owner, lease_until, event_count, byte_count)"
                " VALUES (%s, clock_timestamp() + make_interval(secs => %s), 0, 0) RETURNING claim_id",
                (owner, lease_seconds),
            )
            batch = await cur.fetchone()
            assert batch is not None
            cur = await tx.execute(
                _CLAIM,
                {"max_events": max_events, "max_bytes": max_bytes, "owner": owner,
                 "claim_id": batch["claim_id"], "lease": lease_seconds},
            )
            rows = await cur.fetchall()
            if not rows:
                await tx.execute("DELETE FROM ingest_claim_batch WHERE claim_id = %s", (batch["claim_id"],))
                return None
            claim = Claim(batch["claim_id"], owner, rows[0]["lease_until"], [_claimed(r) for r in rows])
            await tx.execute(
                "UPDATE ingest_claim_batch SET event_count = %s, byte_count = %s WHERE claim_id = %s",
                (len(claim.events), claim.byte_count, claim.claim_id),
            )
        return claim

    async def extend(self, claim: Claim, lease_seconds: float) -> None:
        if not claim.held:
            return
        async with self._pool.transaction() as tx:
            cur = await tx.execute(
                "UPDATE ingest_event SET lease_until = clock_timestamp() + make_interval(secs => %(lease)s)"
                f" WHERE {_HELD} RETURNING lease_until",
                {"lease": lease_seconds, "claim": claim.claim_id, "owner": claim.owner},
            )
            rows = await cur.fetchall()
            # Only what the claim still holds counts: events already committed, failed or given
            # back are no longer claimed, and that is no loss of the lease.
            if len(rows) != len(claim.held):
                raise LeaseLost("the claim lost some of its events", claim_id=claim.claim_id,
                                held=len(claim.held), still_leased=len(rows))
            await tx.execute(
                "UPDATE ingest_claim_batch SET lease_until = %s WHERE claim_id = %s",
                (rows[0]["lease_until"], claim.claim_id),
            )
            claim.lease_until = rows[0]["lease_until"]

    def commit_step(self, claim: Claim, tenant_id: TenantId, event_ids: Sequence[EventId]) -> Step:
        return _CommitClaimed(claim.claim_id, claim.owner, tenant_id, len(set(event_ids)))

    def fail_step(self, claim: Claim, event_ids: Sequence[EventId], reason: str) -> Step:
        return _FailClaimed(claim.claim_id, claim.owner, tuple(sorted(set(event_ids))), reason[:1000])

    async def nack(self, claim: Claim, event_ids: Sequence[EventId], reason: str) -> None:
        async with self._pool.transaction() as tx:
            await tx.execute(
                "UPDATE ingest_event SET state = 'accepted', lease_owner = NULL, lease_until = NULL,"
                " failure_reason = %(reason)s"
                f" WHERE event_id = ANY(%(ids)s) AND {_HELD}",
                {"reason": reason[:1000], "ids": list(event_ids), "claim": claim.claim_id, "owner": claim.owner},
            )
            await tx.execute(f"NOTIFY {INGEST_CHANNEL}")
        claim.let_go(event_ids)

    async def release(self, claim: Claim, event_ids: Sequence[EventId]) -> None:
        async with self._pool.transaction() as tx:
            await tx.execute(
                "UPDATE ingest_event SET state = 'accepted', lease_owner = NULL, lease_until = NULL,"
                " attempts = greatest(attempts - 1, 0)"
                f" WHERE event_id = ANY(%(ids)s) AND {_HELD}",
                {"ids": list(event_ids), "claim": claim.claim_id, "owner": claim.owner},
            )
            await tx.execute(f"NOTIFY {INGEST_CHANNEL}")
        claim.let_go(event_ids)

    async def requeue_expired(self, max_attempts: int) -> list[TenantId]:
        async with self._pool.transaction() as tx:
            cur = await tx.execute(
                "UPDATE ingest_event SET state = 'accepted', lease_owner = NULL, lease_until = NULL"
                " WHERE state = 'claimed' AND lease_until < clock_timestamp() AND attempts < %s",
                (max_attempts,),
            )
            if cur.rowcount:
                await tx.execute(f"NOTIFY {INGEST_CHANNEL}")
            cur = await tx.execute(
                "SELECT DISTINCT tenant_id FROM ingest_event"
                " WHERE state = 'claimed' AND lease_until < clock_timestamp() AND attempts >= %s",
                (max_attempts,),
            )
            return [TenantId(r["tenant_id"]) for r in await cur.fetchall()]

    def fail_exhausted_step(self, tenant_id: TenantId, max_attempts: int) -> Step:
        return _FailExhausted(tenant_id, max_attempts)

    def fail_table_step(self, tenant_id: TenantId, table_id: TableId, reason: str) -> Step:
        return _FailTable(tenant_id, table_id, reason)

    async def failed_tokens(self, tenant_id: TenantId, tokens_: Sequence[int]) -> list[int]:
        if not tokens_:
            return []
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT visibility_token FROM ingest_event WHERE tenant_id = %s AND visibility_token = ANY(%s)"
                " AND state = 'failed' ORDER BY visibility_token",
                (tenant_id, list(tokens_)),
            )
            return [r["visibility_token"] for r in await cur.fetchall()]

    async def wait_for_work(self, timeout: float) -> None:
        # Remembering the last generation seen means a NOTIFY that arrived while the caller was
        # busy (between its last claim and this wait) wakes it at once instead of being lost.
        if self._listener is None:
            await asyncio.sleep(timeout)
            return
        self._seen_generation = await self._listener.wait(self._seen_generation, timeout)

    async def lag(self, tenant_id: TenantId) -> dict[str, Any]:
        # Both counts read partial indexes only (unresolved events; dead letters), never the
        # committed history, so /v1/lag stays cheap however large the bus is.
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FILTER (WHERE state = 'accepted') AS pending_events,"
                " count(*) FILTER (WHERE state = 'claimed') AS claimed_events,"
                " (extract(epoch FROM now() - min(ingested_at)) * 1000)::bigint AS oldest_pending_age_ms,"
                " (SELECT count(*) FROM ingest_event f WHERE f.tenant_id = %(t)s AND f.state = 'failed'"
                "   AND f.replayed_at IS NULL) AS failed_events"
                " FROM ingest_event WHERE tenant_id = %(t)s AND state IN ('accepted', 'claimed')",
                {"t": tenant_id},
            )
            row = await cur.fetchone()
        assert row is not None
        return dict(row)


# --- commit steps ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _CommitClaimed:
    """Precondition and effect: the claim still holds exactly ``count`` events of the tenant under
    a lease unexpired by the database clock; they become committed in the new snapshot. The
    UPDATE locks the rows, so a lease recovery racing this commit waits and then skips them."""

    claim_id: int
    owner: str
    tenant_id: TenantId
    count: int

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        cur = await tx.execute(
            "UPDATE ingest_event SET state = 'committed', lease_owner = NULL, lease_until = NULL,"
            " resolved_at = now(), snapshot_id = %(s)s, payload = NULL"
            f" WHERE tenant_id = %(t)s AND {_HELD}",
            {"s": ctx.snapshot_id, "t": self.tenant_id, "claim": self.claim_id, "owner": self.owner},
        )
        if cur.rowcount != self.count:
            raise LeaseLost("the claim's lease expired or its events were taken before publication",
                            claim_id=self.claim_id, expected=self.count, held=cur.rowcount)
        ctx.resolved += cur.rowcount


@dataclass(frozen=True)
class _FailClaimed:
    claim_id: int
    owner: str
    event_ids: tuple[EventId, ...]
    reason: str

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        cur = await tx.execute(
            "UPDATE ingest_event SET state = 'failed', failure_reason = %(reason)s, resolved_at = now(),"
            " lease_owner = NULL, lease_until = NULL"
            f" WHERE event_id = ANY(%(ids)s) AND {_HELD}",
            {"reason": self.reason, "ids": list(self.event_ids), "claim": self.claim_id, "owner": self.owner},
        )
        if cur.rowcount != len(self.event_ids):
            raise LeaseLost("the claim lost events it was failing", claim_id=self.claim_id)
        ctx.resolved += cur.rowcount


@dataclass(frozen=True)
class _FailExhausted:
    tenant_id: TenantId
    max_attempts: int

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        cur = await tx.execute(
            "UPDATE ingest_event SET state = 'failed', resolved_at = now(), lease_owner = NULL, lease_until = NULL,"
            " failure_reason = 'lease expired ' || attempts || ' times (coordinator crashed or stalled)'"
            "   || coalesce('; last error: ' || failure_reason, '')"
            " WHERE tenant_id = %s AND state = 'claimed' AND lease_until < clock_timestamp() AND attempts >= %s",
            (self.tenant_id, self.max_attempts),
        )
        ctx.resolved += cur.rowcount


@dataclass(frozen=True)
class _FailTable:
    tenant_id: TenantId
    table_id: TableId
    reason: str

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        cur = await tx.execute(
            "UPDATE ingest_event SET state = 'failed', failure_reason = %s, resolved_at = now(),"
            " lease_owner = NULL, lease_until = NULL"
            " WHERE tenant_id = %s AND table_id = %s AND state IN ('accepted', 'claimed')",
            (self.reason, self.tenant_id, self.table_id),
        )
        ctx.resolved += cur.rowcount


def _assign(
    events: Sequence[NewEvent], known: dict[str, tuple[str, bytes, int]], next_token: int
) -> tuple[list[int], list[bool], list[int], list[int]]:
    """Decide, per record, its token and whether it is a duplicate or a conflict.

    A key seen before (stored, or earlier in this request) is a duplicate when op and payload
    hash match and a conflict otherwise; new keys get consecutive tokens in request order.
    """
    assigned: list[int] = []
    duplicate: list[bool] = []
    fresh: list[int] = []
    conflicts: list[int] = []
    seen = dict(known)
    for index, event in enumerate(events):
        prior = seen.get(event.idempotency_key)
        if prior is None:
            token = next_token + len(fresh)
            seen[event.idempotency_key] = (event.op.value, event.payload_hash, token)
            fresh.append(index)
            assigned.append(token)
            duplicate.append(False)
        elif prior[0] == event.op.value and prior[1] == event.payload_hash:
            assigned.append(prior[2])
            duplicate.append(True)
        else:
            conflicts.append(index)
            assigned.append(prior[2])
            duplicate.append(True)
    return assigned, duplicate, fresh, conflicts


def _claimed(row: dict[str, Any]) -> ClaimedEvent:
    token = VisibilityToken(row["visibility_token"])
    return ClaimedEvent(
        EventId(row["event_id"]), TenantId(row["tenant_id"]), TableId(row["table_id"]), token,
        VisibilityToken(row["version_token"]) if row["version_token"] is not None else token,
        Op(row["op"]), row["payload"], row["schema_version"], row["event_time"], row["attempts"], row["trace_id"],
        row["ingested_at"],
    )

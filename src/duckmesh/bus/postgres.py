"""The PostgreSQL ingest bus: events live in ``ingest_event`` in the catalog database.

Claims use ``FOR UPDATE SKIP LOCKED`` so coordinators never block each other; new work is
announced with NOTIFY in the accepting transaction (delivered on commit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from duckmesh.bus.base import (
    Claim,
    ClaimedEvent,
    FailedEvent,
    NewEvent,
    PublishOutcome,
    Watermarks,
)
from duckmesh.catalog.db import AsyncConn, CatalogPool
from duckmesh.catalog.notify import INGEST_CHANNEL, Listener
from duckmesh.domain import EventId, Op, TableId, TenantId, VisibilityToken
from duckmesh.errors import IdempotencyKeyReused, LeaseLost, TenantNotFound

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
    lease_until = now() + make_interval(secs => %(lease)s)
FROM chosen c WHERE e.event_id = c.event_id
RETURNING e.event_id, e.tenant_id, e.table_id, e.visibility_token, e.op, e.payload::text AS payload,
          e.schema_version, e.event_time, e.attempts, e.trace_id, e.lease_until, e.ingested_at
"""

# Per table: the lowest unresolved token (pending events or a pending backfill reservation); the
# watermark is one below it, or the last issued token when nothing is unresolved. One statement,
# so one consistent view of the counter and the events; any in-flight accepting transaction
# still holds tokens above the counter we see.
_WATERMARKS = """
SELECT c.next_visibility_token - 1 AS issued, t.table_id,
       least(u.min_unresolved, r.min_reserved) AS min_unresolved
FROM tenant_counter c
LEFT JOIN table_def t ON t.tenant_id = c.tenant_id AND t.dropped_at IS NULL
LEFT JOIN LATERAL (
    SELECT min(e.visibility_token) AS min_unresolved FROM ingest_event e
    WHERE e.tenant_id = c.tenant_id AND e.table_id = t.table_id AND e.state IN ('accepted', 'claimed')
) u ON true
LEFT JOIN LATERAL (
    SELECT min(v.min_token) AS min_reserved FROM token_reservation v
    WHERE v.tenant_id = c.tenant_id AND v.table_id = t.table_id AND v.state = 'pending'
) r ON true
WHERE c.tenant_id = %(tenant_id)s
"""


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
            # assigned and become visible in commit order, and concurrent retries of one key
            # see each other's committed rows.
            next_token = await lock_counter(tx, tenant_id)
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
            tokens, duplicate, fresh, conflicts = _assign(events, known, next_token)
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
                            tokens[index], trace_id,
                        ))
                await tx.execute(
                    "WITH bump AS (UPDATE tenant_counter SET next_visibility_token = %s WHERE tenant_id = %s)"
                    " SELECT pg_notify(%s, '')",
                    (next_token + len(fresh), tenant_id, INGEST_CHANNEL),
                )
        return PublishOutcome([VisibilityToken(t) for t in tokens], duplicate)

    async def claim(self, owner: str, max_events: int, max_bytes: int, lease_seconds: float) -> Claim | None:
        async with self._pool.transaction() as tx:
            cur = await tx.execute(
                "INSERT INTO ingest_claim_batch (owner, lease_until, event_count, byte_count)"
                " VALUES (%s, now() + make_interval(secs => %s), 0, 0) RETURNING claim_id",
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
        async with self._pool.transaction() as tx:
            cur = await tx.execute(
                "UPDATE ingest_event SET lease_until = now() + make_interval(secs => %s)"
                " WHERE claim_id = %s AND state = 'claimed' AND lease_owner = %s RETURNING lease_until",
                (lease_seconds, claim.claim_id, claim.owner),
            )
            rows = await cur.fetchall()
            if len(rows) != len(claim.events):
                raise LeaseLost("claim lost some of its events", claim_id=claim.claim_id)
            await tx.execute(
                "UPDATE ingest_claim_batch SET lease_until = %s WHERE claim_id = %s",
                (rows[0]["lease_until"], claim.claim_id),
            )
            claim.lease_until = rows[0]["lease_until"]

    async def ack(self, tx: AsyncConn, claim: Claim, event_ids: Sequence[EventId], snapshot_id: int) -> None:
        # The lease is re-checked here, inside the publishing transaction: if another coordinator
        # took the events over after our lease expired, this publish must not happen.
        # Events of this claim that are still claimed by us are exactly the ones being acked
        # (poison events were nacked, released ones handed back), so the claim id selects them
        # without shipping the id list; the count check still catches a lost lease.
        tenant_id = next(e.tenant_id for e in claim.events if e.event_id == event_ids[0])
        cur = await tx.execute(
            "UPDATE ingest_event SET state = 'committed', lease_owner = NULL, lease_until = NULL,"
            " resolved_at = now(), snapshot_id = %s, payload = NULL"
            " WHERE claim_id = %s AND tenant_id = %s AND state = 'claimed' AND lease_owner = %s",
            (snapshot_id, claim.claim_id, tenant_id, claim.owner),
        )
        if cur.rowcount != len(event_ids):
            raise LeaseLost("lease expired before publication", claim_id=claim.claim_id)
        await tx.execute("UPDATE ingest_claim_batch SET state = 'acked' WHERE claim_id = %s", (claim.claim_id,))

    async def nack(
        self, claim: Claim, event_ids: Sequence[EventId], reason: str, max_attempts: int
    ) -> list[FailedEvent]:
        async with self._pool.transaction() as tx:
            cur = await tx.execute(
                "UPDATE ingest_event SET"
                " state = CASE WHEN attempts >= %(max)s THEN 'failed' ELSE 'accepted' END,"
                " failure_reason = CASE WHEN attempts >= %(max)s THEN %(reason)s END,"
                " resolved_at = CASE WHEN attempts >= %(max)s THEN now() END,"
                " lease_owner = NULL, lease_until = NULL"
                " WHERE event_id = ANY(%(ids)s) AND claim_id = %(claim)s AND state = 'claimed'"
                "   AND lease_owner = %(owner)s"
                " RETURNING event_id, tenant_id, table_id, visibility_token, state, failure_reason",
                {"max": max_attempts, "reason": reason, "ids": list(event_ids),
                 "claim": claim.claim_id, "owner": claim.owner},
            )
            rows = await cur.fetchall()
            await tx.execute(f"NOTIFY {INGEST_CHANNEL}")
        return [_failed(r) for r in rows if r["state"] == "failed"]

    async def release(self, claim: Claim, event_ids: Sequence[EventId]) -> None:
        async with self._pool.transaction() as tx:
            await tx.execute(
                "UPDATE ingest_event SET state = 'accepted', lease_owner = NULL, lease_until = NULL,"
                " attempts = greatest(attempts - 1, 0)"
                " WHERE event_id = ANY(%s) AND claim_id = %s AND state = 'claimed' AND lease_owner = %s",
                (list(event_ids), claim.claim_id, claim.owner),
            )
            await tx.execute("UPDATE ingest_claim_batch SET state = 'released' WHERE claim_id = %s", (claim.claim_id,))

    async def requeue_expired(self, max_attempts: int) -> list[FailedEvent]:
        async with self._pool.transaction() as tx:
            cur = await tx.execute(
                "UPDATE ingest_event SET"
                " state = CASE WHEN attempts >= %(max)s THEN 'failed' ELSE 'accepted' END,"
                " failure_reason = CASE WHEN attempts >= %(max)s"
                "   THEN 'lease expired ' || attempts || ' times (coordinator crashed or stalled)' END,"
                " resolved_at = CASE WHEN attempts >= %(max)s THEN now() END,"
                " lease_owner = NULL, lease_until = NULL"
                " WHERE state = 'claimed' AND lease_until < now()"
                " RETURNING event_id, tenant_id, table_id, visibility_token, state, failure_reason",
                {"max": max_attempts},
            )
            rows = await cur.fetchall()
            if rows:
                await tx.execute(f"NOTIFY {INGEST_CHANNEL}")
            cur = await tx.execute(
                "UPDATE token_reservation SET state = 'failed', resolved_at = now()"
                " WHERE state = 'pending' AND expires_at < now()"
                " RETURNING tenant_id, table_id, min_token, backfill_id"
            )
            abandoned = await cur.fetchall()
        failed = [_failed(r) for r in rows if r["state"] == "failed"]
        return failed + [
            FailedEvent(EventId(0), TenantId(r["tenant_id"]), TableId(r["table_id"]), VisibilityToken(r["min_token"]),
                        f"backfill {r['backfill_id']} abandoned (reservation expired)")
            for r in abandoned
        ]

    async def fail_table(self, tx: AsyncConn, tenant_id: TenantId, table_id: TableId, reason: str) -> int:
        cur = await tx.execute(
            "UPDATE ingest_event SET state = 'failed', failure_reason = %s, resolved_at = now(),"
            " lease_owner = NULL, lease_until = NULL"
            " WHERE tenant_id = %s AND table_id = %s AND state IN ('accepted', 'claimed')",
            (reason, tenant_id, table_id),
        )
        return cur.rowcount

    async def wait_for_work(self, timeout: float) -> None:
        # Remembering the last generation seen means a NOTIFY that arrived while the caller was
        # busy (between its last claim and this wait) wakes it at once instead of being lost.
        if self._listener is None:
            await asyncio.sleep(timeout)
            return
        self._seen_generation = await self._listener.wait(self._seen_generation, timeout)

    async def resolved_watermarks(self, tx: AsyncConn, tenant_id: TenantId) -> Watermarks:
        cur = await tx.execute(_WATERMARKS, {"tenant_id": tenant_id})
        rows = await cur.fetchall()
        if not rows:
            raise TenantNotFound("tenant does not exist", tenant_id=tenant_id)
        issued = VisibilityToken(rows[0]["issued"])
        tables: dict[TableId, VisibilityToken] = {}
        tenant_mark = issued
        for r in rows:
            if r["table_id"] is None:
                continue
            mark = issued if r["min_unresolved"] is None else VisibilityToken(r["min_unresolved"] - 1)
            tables[TableId(r["table_id"])] = mark
            tenant_mark = min(tenant_mark, mark)
        return Watermarks(tenant_mark, tables, issued)

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

async def lock_counter(tx: AsyncConn, tenant_id: TenantId) -> int:
    """Lock the tenant's token counter until ``tx`` ends and return the next token. Every
    token allocation (ingest, replay, backfill reservation) goes through this lock, which makes
    tokens gap-free and commit-ordered per tenant."""
    cur = await tx.execute(
        "SELECT next_visibility_token FROM tenant_counter WHERE tenant_id = %s FOR UPDATE", (tenant_id,)
    )
    row = await cur.fetchone()
    if row is None:
        raise TenantNotFound("tenant does not exist", tenant_id=tenant_id)
    return int(row["next_visibility_token"])


def _assign(
    events: Sequence[NewEvent], known: dict[str, tuple[str, bytes, int]], next_token: int
) -> tuple[list[int], list[bool], list[int], list[int]]:
    """Decide, per record, its token and whether it is a duplicate or a conflict.

    A key seen before (stored, or earlier in this request) is a duplicate when op and payload
    hash match and a conflict otherwise; new keys get consecutive tokens in request order.
    """
    tokens: list[int] = []
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
            tokens.append(token)
            duplicate.append(False)
        elif prior[0] == event.op.value and prior[1] == event.payload_hash:
            tokens.append(prior[2])
            duplicate.append(True)
        else:
            conflicts.append(index)
            tokens.append(prior[2])
            duplicate.append(True)
    return tokens, duplicate, fresh, conflicts


def _claimed(row: dict[str, Any]) -> ClaimedEvent:
    return ClaimedEvent(
        EventId(row["event_id"]), TenantId(row["tenant_id"]), TableId(row["table_id"]),
        VisibilityToken(row["visibility_token"]), Op(row["op"]), row["payload"], row["schema_version"],
        row["event_time"], row["attempts"], row["trace_id"], row["ingested_at"],
    )


def _failed(row: dict[str, Any]) -> FailedEvent:
    return FailedEvent(
        EventId(row["event_id"]), TenantId(row["tenant_id"]), TableId(row["table_id"]),
        VisibilityToken(row["visibility_token"]), row["failure_reason"] or "",
    )

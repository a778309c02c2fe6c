"""PostgreSQL-bus operations beyond the IngestBus port: per-tenant lag for the sampler,
backfill token reservations, dead-letter listing and replay. All token allocation goes through
the same counter lock as ingest (``_lock_counter``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from duckmesh.bus.postgres import lock_counter
from duckmesh.catalog.db import AsyncConn, CatalogPool
from duckmesh.catalog.notify import INGEST_CHANNEL
from duckmesh.domain import TableId, TenantId
from duckmesh.errors import LeaseLost


async def lag_by_tenant(pool: CatalogPool) -> list[dict[str, Any]]:
    """Unresolved events and their age per tenant, with the tenant's current watermark."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT h.tenant_id, h.max_visibility_token AS watermark,"
            " coalesce(p.pending, 0) AS pending_events, p.oldest AS oldest_pending_age_s"
            " FROM tenant_head h LEFT JOIN ("
            "   SELECT tenant_id, count(*) AS pending, extract(epoch FROM now() - min(ingested_at))::float AS oldest"
            "   FROM ingest_event WHERE state IN ('accepted', 'claimed') GROUP BY tenant_id"
            " ) p USING (tenant_id)"
        )
        return list(await cur.fetchall())


@dataclass(frozen=True)
class Reservation:
    reservation_id: int
    tenant_id: TenantId
    table_id: TableId
    backfill_id: str
    payload_hash: bytes
    min_token: int
    max_token: int
    state: str
    snapshot_id: int | None
    record_count: int

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Reservation:
        return cls(
            row["reservation_id"], TenantId(row["tenant_id"]), TableId(row["table_id"]), row["backfill_id"],
            bytes(row["payload_hash"]), row["min_token"], row["max_token"], row["state"], row["snapshot_id"],
            row["record_count"],
        )


async def reserve_tokens(
    pool: CatalogPool, tenant_id: TenantId, table_id: TableId, backfill_id: str, payload_hash: bytes,
    count: int, ttl_seconds: float,
) -> tuple[Reservation, bool]:
    """Reserve ``count`` consecutive tokens for a backfill (same counter lock as ingest, so the
    range is gap-free and commit-ordered). Returns (reservation, created); an existing
    reservation with the same backfill id is returned as is (the caller decides)."""
    async with pool.transaction() as tx:
        first = await lock_counter(tx, tenant_id)
        cur = await tx.execute(
            "SELECT * FROM token_reservation WHERE tenant_id = %s AND table_id = %s AND backfill_id = %s",
            (tenant_id, table_id, backfill_id),
        )
        existing = await cur.fetchone()
        if existing is not None:
            return Reservation.from_row(existing), False
        cur = await tx.execute(
            "INSERT INTO token_reservation (tenant_id, table_id, backfill_id, payload_hash, min_token, max_token,"
            " expires_at, record_count) VALUES (%s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s), %s)"
            " RETURNING *",
            (tenant_id, table_id, backfill_id, payload_hash, first, first + count - 1, ttl_seconds, count),
        )
        created = await cur.fetchone()
        await tx.execute(
            "UPDATE tenant_counter SET next_visibility_token = %s WHERE tenant_id = %s", (first + count, tenant_id)
        )
    assert created is not None
    return Reservation.from_row(created), True


async def commit_reservation(tx: AsyncConn, reservation: Reservation, snapshot_id: int) -> None:
    """Inside the publishing transaction: the reservation must still be pending (not expired)."""
    cur = await tx.execute(
        "UPDATE token_reservation SET state = 'committed', snapshot_id = %s, resolved_at = now()"
        " WHERE reservation_id = %s AND state = 'pending' AND expires_at > now()",
        (snapshot_id, reservation.reservation_id),
    )
    if cur.rowcount != 1:
        raise LeaseLost("the backfill's token reservation expired before publication",
                        backfill_id=reservation.backfill_id)


async def dead_letters(
    pool: CatalogPool, tenant_id: TenantId, limit: int, after_event_id: int = 0
) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT e.event_id, t.table_name, e.table_id, e.idempotency_key, e.op, e.visibility_token,"
            " e.failure_reason, e.attempts, e.resolved_at AS failed_at, e.payload::text AS payload,"
            " e.schema_version, e.trace_id"
            " FROM ingest_event e LEFT JOIN table_def t ON t.table_id = e.table_id"
            " WHERE e.tenant_id = %s AND e.state = 'failed' AND e.replayed_at IS NULL AND e.event_id > %s"
            " ORDER BY e.event_id LIMIT %s",
            (tenant_id, after_event_id, limit),
        )
        return list(await cur.fetchall())


async def replay_dead_letters(
    pool: CatalogPool, tenant_id: TenantId, event_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Give failed events a second life: each becomes a new event with a new token (the old one
    stays failed, so the watermark never goes back) under a derived idempotency key, so replaying
    the same dead letter twice is a no-op. Events of dropped tables are not replayed."""
    async with pool.transaction() as tx:
        next_token = await lock_counter(tx, tenant_id)
        cur = await tx.execute(
            "SELECT e.* FROM ingest_event e JOIN table_def t ON t.table_id = e.table_id AND t.dropped_at IS NULL"
            " WHERE e.tenant_id = %s AND e.event_id = ANY(%s) AND e.state = 'failed' AND e.replayed_at IS NULL"
            " AND e.payload IS NOT NULL ORDER BY e.event_id FOR UPDATE OF e",
            (tenant_id, list(event_ids)),
        )
        rows = await cur.fetchall()
        replayed = []
        for offset, row in enumerate(rows):
            token = next_token + offset
            await tx.execute(
                "INSERT INTO ingest_event (tenant_id, table_id, idempotency_key, op, payload, payload_hash,"
                " payload_bytes, schema_version, event_time, visibility_token, trace_id)"
                " SELECT tenant_id, table_id, idempotency_key || '~replay-' || event_id, op, payload, payload_hash,"
                " payload_bytes, schema_version, event_time, %s, trace_id FROM ingest_event WHERE event_id = %s",
                (token, row["event_id"]),
            )
            await tx.execute(
                "UPDATE ingest_event SET replayed_at = now(), replay_token = %s WHERE event_id = %s",
                (token, row["event_id"]),
            )
            replayed.append({"event_id": row["event_id"], "visibility_token": token})
        if replayed:
            await tx.execute(
                "WITH bump AS (UPDATE tenant_counter SET next_visibility_token = %s WHERE tenant_id = %s)"
                " SELECT pg_notify(%s, '')",
                (next_token + len(replayed), tenant_id, INGEST_CHANNEL),
            )
    return replayed

"""Visibility tokens: the tenant counter, the watermark rule and backfill token reservations.

Every token allocation (ingest, dead-letter replay, backfill reservation) goes through
``lock_counter`` in the accepting transaction, which makes tokens gap-free and commit-ordered per
tenant (CONSISTENCY.md). The watermark is computed here too, inside the commit transaction: it is
one statement over the counter, the unresolved bus events and the pending reservations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from duckmesh.catalog.db import AsyncConn, CatalogPool
from duckmesh.domain import ReservationId, TableId, TenantId, VisibilityToken
from duckmesh.errors import LeaseLost, TableNotFound, TenantNotFound

if TYPE_CHECKING:  # the commit protocol calls into this module; steps only need its context type
    from duckmesh.catalog.commit import CommitContext


async def lock_counter(tx: AsyncConn, tenant_id: TenantId) -> int:
    """Lock the tenant's token counter until ``tx`` ends and return the next token."""
    cur = await tx.execute(
        "SELECT next_visibility_token FROM tenant_counter WHERE tenant_id = %s FOR UPDATE", (tenant_id,)
    )
    row = await cur.fetchone()
    if row is None:
        raise TenantNotFound("tenant does not exist", tenant_id=tenant_id)
    return int(row["next_visibility_token"])


async def begin_accept(tx: AsyncConn, tenant_id: TenantId, table_id: TableId) -> int:
    """Start an accepting transaction: the counter lock, then a key-share lock on the table row
    that a DROP (which locks the row for update) must wait for. A dropped table accepts nothing,
    so no acknowledged write can ever land in a dropped table. Returns the next token."""
    next_token = await lock_counter(tx, tenant_id)
    cur = await tx.execute(
        "SELECT table_name FROM table_def WHERE table_id = %s AND tenant_id = %s AND dropped_at IS NULL"
        " FOR KEY SHARE",
        (table_id, tenant_id),
    )
    if await cur.fetchone() is None:
        raise TableNotFound("the table was dropped", table_id=table_id)
    return next_token


async def begin_group_accept(
    tx: AsyncConn, tenant_id: TenantId, table_ids: list[TableId]
) -> tuple[int, dict[TableId, int]]:
    """``begin_accept`` for a group of requests over several tables, in one statement: the next
    token, and the current schema version of each table that is still live (key-share locked;
    a dropped table is simply absent)."""
    cur = await tx.execute(
        "WITH c AS (SELECT next_visibility_token FROM tenant_counter WHERE tenant_id = %(t)s FOR UPDATE),"
        " l AS (SELECT table_id, schema_version FROM table_def WHERE tenant_id = %(t)s AND table_id = ANY(%(ids)s)"
        "   AND dropped_at IS NULL ORDER BY table_id FOR KEY SHARE)"
        " SELECT c.next_visibility_token, l.table_id, l.schema_version FROM c LEFT JOIN l ON true",
        {"t": tenant_id, "ids": table_ids},
    )
    rows = await cur.fetchall()
    if not rows:
        raise TenantNotFound("tenant does not exist", tenant_id=tenant_id)
    live = {TableId(r["table_id"]): int(r["schema_version"]) for r in rows if r["table_id"] is not None}
    return int(rows[0]["next_visibility_token"]), live


async def advance_counter(tx: AsyncConn, tenant_id: TenantId, next_token: int) -> None:
    await tx.execute(
        "UPDATE tenant_counter SET next_visibility_token = %s WHERE tenant_id = %s", (next_token, tenant_id)
    )


async def issued_token(conn: AsyncConn, tenant_id: TenantId) -> int:
    cur = await conn.execute(
        "SELECT next_visibility_token - 1 AS issued FROM tenant_counter WHERE tenant_id = %s", (tenant_id,)
    )
    row = await cur.fetchone()
    if row is None:
        raise TenantNotFound("tenant does not exist", tenant_id=tenant_id)
    return int(row["issued"])


@dataclass(frozen=True)
class Watermarks:
    tenant: VisibilityToken
    tables: dict[TableId, VisibilityToken]
    issued: VisibilityToken


# Per live table: the lowest unresolved token (a bus segment not yet committed or failed, or a
# pending backfill reservation); the watermark is one below it, or the last issued token when nothing is
# unresolved. One statement, so one consistent view of the counter and the events; an accepting
# transaction still in flight holds tokens above the counter value this statement sees.
_WATERMARKS = """
SELECT c.next_visibility_token - 1 AS issued, t.table_id,
       least(u.min_unresolved, r.min_reserved) AS min_unresolved
FROM tenant_counter c
LEFT JOIN table_def t ON t.tenant_id = c.tenant_id AND t.dropped_at IS NULL
LEFT JOIN LATERAL (
    SELECT min(g.min_token) AS min_unresolved FROM ingest_segment g
    WHERE g.tenant_id = c.tenant_id AND g.table_id = t.table_id AND g.state IN ('accepted', 'claimed')
) u ON true
LEFT JOIN LATERAL (
    SELECT min(v.min_token) AS min_reserved FROM token_reservation v
    WHERE v.tenant_id = c.tenant_id AND v.table_id = t.table_id AND v.state = 'pending'
) r ON true
WHERE c.tenant_id = %(tenant_id)s
"""


async def resolved_watermarks(tx: AsyncConn, tenant_id: TenantId) -> Watermarks:
    """Inside the commit transaction: the tenant's and each live table's watermark."""
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


# --- backfill token reservations -------------------------------------------------------------

@dataclass(frozen=True)
class Reservation:
    reservation_id: ReservationId
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
            ReservationId(row["reservation_id"]), TenantId(row["tenant_id"]), TableId(row["table_id"]),
            row["backfill_id"], bytes(row["payload_hash"]), row["min_token"], row["max_token"], row["state"],
            row["snapshot_id"], row["record_count"],
        )


async def reserve_tokens(
    pool: CatalogPool, tenant_id: TenantId, table_id: TableId, backfill_id: str, payload_hash: bytes,
    count: int, ttl_seconds: float,
) -> tuple[Reservation, bool]:
    """Reserve ``count`` consecutive tokens for a backfill in an accepting transaction (counter lock
    and table key-share lock, as ingest). Returns (reservation, created); an existing reservation
    with the same backfill id is returned as is (the caller decides)."""
    async with pool.transaction() as tx:
        first = await begin_accept(tx, tenant_id, table_id)
        cur = await tx.execute(
            "SELECT * FROM token_reservation WHERE tenant_id = %s AND table_id = %s AND backfill_id = %s",
            (tenant_id, table_id, backfill_id),
        )
        existing = await cur.fetchone()
        if existing is not None:
            return Reservation.from_row(existing), False
        cur = await tx.execute(
            "INSERT INTO token_reservation (tenant_id, table_id, backfill_id, payload_hash, min_token, max_token,"
            " expires_at, record_count)"
            " VALUES (%s, %s, %s, %s, %s, %s, clock_timestamp() + make_interval(secs => %s), %s) RETURNING *",
            (tenant_id, table_id, backfill_id, payload_hash, first, first + count - 1, ttl_seconds, count),
        )
        created = await cur.fetchone()
        await advance_counter(tx, tenant_id, first + count)
    assert created is not None
    return Reservation.from_row(created), True


async def extend_reservation(pool: CatalogPool, reservation: Reservation, ttl_seconds: float) -> None:
    """Keep a reservation pending while its backfill works; LeaseLost once it expired (then it is
    failed, or about to be, and the backfill must not publish)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE token_reservation SET expires_at = clock_timestamp() + make_interval(secs => %s)"
            " WHERE reservation_id = %s AND state = 'pending' AND expires_at > clock_timestamp()",
            (ttl_seconds, reservation.reservation_id),
        )
        if cur.rowcount != 1:
            raise LeaseLost("the backfill's token reservation expired", backfill_id=reservation.backfill_id)


@dataclass(frozen=True)
class ReservationPending:
    """Commit precondition of a backfill: its reservation is still pending and unexpired by the
    database clock. Applying it commits the reservation in the same transaction."""

    reservation: Reservation

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        cur = await tx.execute(
            "UPDATE token_reservation SET state = 'committed', snapshot_id = %s, resolved_at = clock_timestamp()"
            " WHERE reservation_id = %s AND state = 'pending' AND expires_at > clock_timestamp()",
            (ctx.snapshot_id, self.reservation.reservation_id),
        )
        if cur.rowcount != 1:
            raise LeaseLost("the backfill's token reservation expired before publication",
                            backfill_id=self.reservation.backfill_id)
        ctx.resolved += 1


@dataclass(frozen=True)
class FailExpiredReservations:
    """Commit effect: abandoned reservations of the tenant (expired) become failed, which resolves
    their tokens for the watermark in the same transaction that publishes the new watermark."""

    tenant_id: TenantId

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        cur = await tx.execute(
            "UPDATE token_reservation SET state = 'failed', resolved_at = clock_timestamp()"
            " WHERE tenant_id = %s AND state = 'pending' AND expires_at < clock_timestamp()",
            (self.tenant_id,),
        )
        ctx.resolved += cur.rowcount


@dataclass(frozen=True)
class FailTableReservations:
    """Commit effect of a DROP: the table's pending reservations fail with it."""

    table_id: TableId

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        cur = await tx.execute(
            "UPDATE token_reservation SET state = 'failed', resolved_at = clock_timestamp()"
            " WHERE table_id = %s AND state = 'pending'",
            (self.table_id,),
        )
        ctx.resolved += cur.rowcount


async def tenants_with_expired_reservations(conn: AsyncConn) -> list[TenantId]:
    cur = await conn.execute(
        "SELECT DISTINCT tenant_id FROM token_reservation WHERE state = 'pending' AND expires_at < clock_timestamp()"
    )
    return [TenantId(r["tenant_id"]) for r in await cur.fetchall()]

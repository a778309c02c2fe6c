"""PostgreSQL-bus operations beyond the IngestBus port: lag per tenant and per table (``/v1/lag``
and the sampler's gauges), the leases workers hold, and bus cleanup for retention."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from duckmesh.catalog.db import CatalogPool
from duckmesh.domain import SnapshotId, TableId, TenantId, VisibilityToken
from duckmesh.errors import TenantNotFound


async def lag_by_tenant(pool: CatalogPool) -> list[dict[str, Any]]:
    """Unresolved records and their age per tenant, with the tenant's current watermark."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT h.tenant_id, h.max_visibility_token AS watermark,"
            " coalesce(p.pending, 0) AS pending_events, p.oldest AS oldest_pending_age_s"
            " FROM tenant_head h LEFT JOIN ("
            "   SELECT tenant_id, sum(record_count) AS pending,"
            "          extract(epoch FROM now() - min(ingested_at))::float AS oldest"
            "   FROM ingest_segment WHERE state IN ('accepted', 'claimed') GROUP BY tenant_id"
            " ) p USING (tenant_id)"
        )
        return list(await cur.fetchall())


@dataclass(frozen=True)
class TableLag:
    """One live table's share of the tenant's lag. ``watermark`` is the table's watermark in the
    head snapshot; ``latest_pending_token`` the newest token still waiting (None: nothing waits)."""

    table_id: TableId
    table_name: str
    pending_events: int
    claimed_events: int
    failed_events: int
    oldest_pending_age_ms: int | None
    latest_pending_token: VisibilityToken | None
    watermark: VisibilityToken

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def lag_by_table(pool: CatalogPool, tenant_id: TenantId) -> list[TableLag]:
    """Per live table of the tenant: unresolved events by state, their oldest age, dead letters not
    replayed, and the table's watermark. Reads the unresolved and dead-letter partial indexes only."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT t.table_id, t.table_name, coalesce(e.pending, 0) AS pending_events,"
            " coalesce(e.claimed, 0) AS claimed_events, coalesce(f.failed, 0) AS failed_events,"
            " (extract(epoch FROM now() - e.oldest) * 1000)::bigint AS oldest_pending_age_ms,"
            " e.newest AS latest_pending_token, coalesce(w.max_visibility_token, 0) AS watermark"
            " FROM table_def t"
            " LEFT JOIN (SELECT table_id, sum(record_count) FILTER (WHERE state = 'accepted') AS pending,"
            "     sum(record_count) FILTER (WHERE state = 'claimed') AS claimed, min(ingested_at) AS oldest,"
            "     max(max_token) AS newest"
            "   FROM ingest_segment WHERE tenant_id = %(t)s AND state IN ('accepted', 'claimed') GROUP BY table_id"
            " ) e USING (table_id)"
            " LEFT JOIN (SELECT table_id, count(*) AS failed FROM ingest_dead_letter"
            "   WHERE tenant_id = %(t)s AND replayed_at IS NULL GROUP BY table_id"
            " ) f USING (table_id)"
            " LEFT JOIN tenant_head h ON h.tenant_id = t.tenant_id"
            " LEFT JOIN snapshot_table_watermark w ON w.snapshot_id = h.head_snapshot_id AND w.table_id = t.table_id"
            " WHERE t.tenant_id = %(t)s AND t.dropped_at IS NULL ORDER BY t.table_name",
            {"t": tenant_id},
        )
        return [TableLag(TableId(r["table_id"]), r["table_name"], r["pending_events"], r["claimed_events"],
                         r["failed_events"], r["oldest_pending_age_ms"], r["latest_pending_token"],
                         VisibilityToken(r["watermark"])) for r in await cur.fetchall()]


async def table_lag_all(pool: CatalogPool, limit: int) -> list[dict[str, Any]]:
    """For the sampler, every tenant's live tables (at most ``limit`` rows, in a stable order):
    {tenant_id, table_name, pending_events (accepted or claimed), oldest_pending_age_s, watermark}."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT t.tenant_id, t.table_name, coalesce(e.unresolved, 0) AS pending_events,"
            " e.oldest AS oldest_pending_age_s, coalesce(w.max_visibility_token, 0) AS watermark"
            " FROM table_def t"
            " LEFT JOIN (SELECT tenant_id, table_id, sum(record_count) AS unresolved,"
            "     extract(epoch FROM now() - min(ingested_at))::float AS oldest"
            "   FROM ingest_segment WHERE state IN ('accepted', 'claimed') GROUP BY tenant_id, table_id"
            " ) e USING (tenant_id, table_id)"
            " LEFT JOIN tenant_head h ON h.tenant_id = t.tenant_id"
            " LEFT JOIN snapshot_table_watermark w ON w.snapshot_id = h.head_snapshot_id AND w.table_id = t.table_id"
            " WHERE t.dropped_at IS NULL ORDER BY t.tenant_id, t.table_id LIMIT %s",
            (limit,),
        )
        return list(await cur.fetchall())


@dataclass(frozen=True)
class Freshness:
    """The tenant's issued tokens against its head snapshot."""

    latest_issued_token: VisibilityToken
    latest_visibility_token: VisibilityToken
    latest_snapshot_id: SnapshotId | None
    latest_snapshot_time: datetime | None


async def freshness(pool: CatalogPool, tenant_id: TenantId) -> Freshness:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT c.next_visibility_token - 1 AS issued, h.max_visibility_token, h.head_snapshot_id, s.created_at"
            " FROM tenant_counter c JOIN tenant_head h USING (tenant_id)"
            " LEFT JOIN snapshot s ON s.snapshot_id = h.head_snapshot_id WHERE c.tenant_id = %s",
            (tenant_id,),
        )
        row = await cur.fetchone()
    if row is None:
        raise TenantNotFound("tenant does not exist", tenant_id=tenant_id)
    return Freshness(VisibilityToken(row["issued"]), VisibilityToken(row["max_visibility_token"]),
                     row["head_snapshot_id"], row["created_at"])


async def ingest_leases(pool: CatalogPool, tenant_id: TenantId | None = None) -> list[dict[str, Any]]:
    """Who holds claimed records: per owner and tenant, how many, the earliest lease end and whether
    every lease of the group has expired (a coordinator that stopped renewing)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT lease_owner AS owner, tenant_id, sum(record_count) AS events, min(lease_until) AS lease_until,"
            " bool_and(lease_until < clock_timestamp()) AS expired, max(attempts) AS max_attempts"
            " FROM ingest_segment WHERE state = 'claimed' AND (%(t)s::bigint IS NULL OR tenant_id = %(t)s)"
            " GROUP BY lease_owner, tenant_id ORDER BY min(lease_until), lease_owner",
            {"t": tenant_id},
        )
        return list(await cur.fetchall())


async def expire_ingest_leases(pool: CatalogPool, owner: str) -> int:
    """End ``owner``'s ingest leases now: the next lease recovery of any coordinator returns the
    events to the pool (an attempt is counted). Safe against an owner that is still alive: every
    publication re-checks its lease with the database clock, so its commit fails (LeaseLost)."""
    async with pool.transaction() as tx:
        cur = await tx.execute(
            "UPDATE ingest_segment SET lease_until = clock_timestamp() - interval '1 millisecond'"
            " WHERE state = 'claimed' AND lease_owner = %s AND lease_until >= clock_timestamp()"
            " RETURNING record_count",
            (owner,),
        )
        records = sum(r["record_count"] for r in await cur.fetchall())
        await tx.execute(
            "UPDATE ingest_claim_batch SET lease_until = clock_timestamp() - interval '1 millisecond'"
            " WHERE owner = %s AND state = 'active' AND lease_until >= clock_timestamp()",
            (owner,),
        )
        return records


@dataclass(frozen=True)
class BusCleanup:
    committed_events: int
    replayed_dead_letters: int
    expired_dead_letters: int
    finished_claims: int
    resolved_reservations: int
    idempotency_keys: int = 0
    request_keys: int = 0
    segments: int = 0

    def total(self) -> int:
        return (self.committed_events + self.replayed_dead_letters + self.expired_dead_letters
                + self.finished_claims + self.resolved_reservations)


# Keys are remembered for the idempotency window after their record became visible: a key whose
# token is covered by a snapshot published before the window started can go.
_FORGOTTEN = ("(SELECT coalesce(max(max_visibility_token), 0) FROM snapshot WHERE tenant_id = %(t)s"
              " AND created_at < now() - %(window)s)")

# Each statement names what it deletes: resolved segments (their records live on in Parquet or as
# dead letters) and keys after the idempotency window, replayed dead letters after the window, dead
# letters nobody replayed after the dead-letter retention, resolved reservations after the window;
# a claim row goes once none of its segments is still claimed. ``committed_events`` counts the
# records of the deleted segments.
_CLEANUP = {
    "idempotency_keys": f"ingest_key WHERE tenant_id = %(t)s AND token <= {_FORGOTTEN}",
    "request_keys": f"ingest_request WHERE tenant_id = %(t)s AND max_token <= {_FORGOTTEN}",
    "replayed_dead_letters": "ingest_dead_letter WHERE tenant_id = %(t)s AND replayed_at < now() - %(window)s",
    "expired_dead_letters": "ingest_dead_letter WHERE tenant_id = %(t)s AND replayed_at IS NULL"
                            " AND failed_at < now() - %(dead)s",
    "segments": "ingest_segment g WHERE tenant_id = %(t)s AND state IN ('committed', 'failed')"
                " AND resolved_at < now() - %(window)s",
    "finished_claims": "ingest_claim_batch b WHERE b.claimed_at < now() - interval '1 minute'"
                       " AND NOT EXISTS (SELECT 1 FROM ingest_segment g WHERE g.claim_id = b.claim_id"
                       "   AND g.state = 'claimed')",
    "resolved_reservations": "token_reservation WHERE tenant_id = %(t)s AND state <> 'pending'"
                             " AND resolved_at < now() - %(window)s",
}


async def clean_bus(
    pool: CatalogPool, tenant_id: TenantId, window: timedelta, dead_letter_retention: timedelta, *,
    dry_run: bool = False,
) -> BusCleanup:
    """Delete what the bus no longer needs (a dry run counts it). Claim rows are not per tenant:
    any tenant's run cleans them."""
    counts: dict[str, int] = {}
    params = {"t": tenant_id, "window": window, "dead": dead_letter_retention}
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT coalesce(sum(record_count), 0)::bigint AS n FROM " + _CLEANUP["segments"], params)
        row = await cur.fetchone()
        counts["committed_events"] = int(row["n"]) if row else 0
        for name, where in _CLEANUP.items():
            if dry_run:
                cur = await conn.execute(f"SELECT count(*) AS n FROM {where}", params)
                found = await cur.fetchone()
                counts[name] = int(found["n"]) if found else 0
            else:
                counts[name] = (await conn.execute(f"DELETE FROM {where}", params)).rowcount
    return BusCleanup(**counts)

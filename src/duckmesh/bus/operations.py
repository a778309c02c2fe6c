"""PostgreSQL-bus operations beyond the IngestBus port: per-tenant lag for the sampler and bus
cleanup for retention."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from duckmesh.catalog.db import CatalogPool
from duckmesh.domain import TenantId


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

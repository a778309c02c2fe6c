"""PostgreSQL-bus operations beyond the IngestBus port: per-tenant lag for the sampler and bus
cleanup for retention."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from duckmesh.catalog.db import CatalogPool
from duckmesh.domain import TenantId


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
class BusCleanup:
    committed_events: int
    replayed_dead_letters: int
    expired_dead_letters: int
    finished_claims: int
    resolved_reservations: int

    def total(self) -> int:
        return (self.committed_events + self.replayed_dead_letters + self.expired_dead_letters
                + self.finished_claims + self.resolved_reservations)


# Each statement names what it deletes; committed events and replayed dead letters are kept for
# the idempotency window (their keys are still recognised), dead letters nobody replayed for the
# dead-letter retention, resolved reservations for the idempotency window; a claim row goes once
# none of its events is still claimed.
_CLEANUP = {
    "committed_events": "ingest_event WHERE tenant_id = %(t)s AND state = 'committed'"
                        " AND resolved_at < now() - %(window)s",
    "replayed_dead_letters": "ingest_event WHERE tenant_id = %(t)s AND state = 'failed'"
                             " AND replayed_at < now() - %(window)s",
    "expired_dead_letters": "ingest_event WHERE tenant_id = %(t)s AND state = 'failed' AND replayed_at IS NULL"
                            " AND resolved_at < now() - %(dead)s",
    "finished_claims": "ingest_claim_batch b WHERE b.claimed_at < now() - interval '1 minute'"
                       " AND NOT EXISTS (SELECT 1 FROM ingest_event e WHERE e.claim_id = b.claim_id"
                       "   AND e.state = 'claimed')",
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
        for name, where in _CLEANUP.items():
            if dry_run:
                cur = await conn.execute(f"SELECT count(*) AS n FROM {where}", params)
                row = await cur.fetchone()
                counts[name] = int(row["n"]) if row else 0
            else:
                cur = await conn.execute(f"DELETE FROM {where}", params)
                counts[name] = cur.rowcount
    return BusCleanup(**counts)

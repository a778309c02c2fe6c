"""Dead letters: listing failed events and replaying them (ADR 0006).

A replay re-accepts a failed event as a new event: a new visibility token (what the caller waits
on, allocated under the counter lock like any ingest) but the ORIGINAL token as its version, the
value that orders versions of a key. So a replayed old upsert can never overtake a newer version
of its key; compaction keeps the delete markers a replay could otherwise uncover
(``catalog.commit.NoOlderVersionsOutside`` counts unreplayed dead letters).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from duckmesh.catalog import tokens
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.notify import INGEST_CHANNEL
from duckmesh.domain import TenantId


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
    """Give failed events a second life in one accepting transaction: each becomes a new event
    with a new token (the old one stays failed, so the watermark never goes back) and its
    original version, under a derived idempotency key, so replaying the same dead letter twice is
    a no-op. Events of dropped tables are not replayed (their rows are key-share locked so a
    concurrent DROP waits)."""
    async with pool.transaction() as tx:
        next_token = await tokens.lock_counter(tx, tenant_id)
        cur = await tx.execute(
            "SELECT e.event_id FROM ingest_event e"
            " JOIN table_def t ON t.table_id = e.table_id AND t.dropped_at IS NULL"
            " WHERE e.tenant_id = %s AND e.event_id = ANY(%s) AND e.state = 'failed' AND e.replayed_at IS NULL"
            " AND e.payload IS NOT NULL ORDER BY e.event_id FOR UPDATE OF e FOR KEY SHARE OF t",
            (tenant_id, list(event_ids)),
        )
        chosen = [r["event_id"] for r in await cur.fetchall()]
        if not chosen:
            return []
        # In event order (= original token order): replays of two versions of one key keep their order.
        cur = await tx.execute(
            "WITH src AS (SELECT e.*, %(first)s + row_number() OVER (ORDER BY e.event_id) - 1 AS new_token"
            "   FROM ingest_event e WHERE e.event_id = ANY(%(ids)s)),"
            " ins AS (INSERT INTO ingest_event (tenant_id, table_id, idempotency_key, op, payload, payload_hash,"
            "   payload_bytes, schema_version, event_time, visibility_token, version_token, trace_id)"
            "   SELECT tenant_id, table_id, idempotency_key || '~replay-' || event_id, op, payload, payload_hash,"
            "   payload_bytes, schema_version, event_time, new_token, coalesce(version_token, visibility_token),"
            "   trace_id FROM src)"
            " UPDATE ingest_event e SET replayed_at = now(), replay_token = src.new_token FROM src"
            " WHERE e.event_id = src.event_id RETURNING e.event_id, src.new_token AS visibility_token",
            {"first": next_token, "ids": chosen},
        )
        replayed = sorted((dict(r) for r in await cur.fetchall()), key=lambda r: r["event_id"])
        await tokens.advance_counter(tx, tenant_id, next_token + len(replayed))
        await tx.execute("SELECT pg_notify(%s, '')", (INGEST_CHANNEL,))
    return replayed

"""Dead letters: listing records that could not be materialized, and replaying them (ADR 0007).

A replay re-accepts dead letters as new segments: new visibility tokens (what the caller waits
on, allocated under the counter lock like any ingest) but each record's ORIGINAL token as its
version (``_dm_version``), the value that orders versions of a key. So a replayed old upsert can
never overtake a newer version of its key; compaction keeps the delete markers a replay could
otherwise uncover (``catalog.commit.NoOlderVersionsOutside`` counts unreplayed dead letters).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby
from typing import Any

import pyarrow as pa

from duckmesh.bus.base import encode_segment
from duckmesh.catalog import tables, tokens
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.notify import INGEST_CHANNEL
from duckmesh.columnar import canonical_table
from duckmesh.domain import EVENT_TIME_COLUMN, KEY_COLUMN, OP_COLUMN, VERSION_COLUMN, TableId, TenantId
from duckmesh.schema import TableSchema, arrow_type

_TIMESTAMP = pa.timestamp("us", tz="UTC")


async def dead_letters(
    pool: CatalogPool, tenant_id: TenantId, limit: int, after_event_id: int = 0
) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT d.dead_letter_id AS event_id, t.table_name, d.table_id, d.idempotency_key, d.op,"
            " d.visibility_token, d.failure_reason, d.attempts, d.failed_at, d.payload::text AS payload,"
            " d.schema_version, d.trace_id"
            " FROM ingest_dead_letter d LEFT JOIN table_def t ON t.table_id = d.table_id"
            " WHERE d.tenant_id = %s AND d.replayed_at IS NULL AND d.dead_letter_id > %s"
            " ORDER BY d.dead_letter_id LIMIT %s",
            (tenant_id, after_event_id, limit),
        )
        return list(await cur.fetchall())


def _replay_table(rows: Sequence[dict[str, Any]], schema: TableSchema) -> pa.Table:
    user = canonical_table([r["payload_text"] for r in rows], schema)
    user_schema = [pa.field(c.name, arrow_type(c.type)) for c in schema.columns]
    hidden = [
        (OP_COLUMN, pa.array([r["op"] for r in rows], pa.string())),
        (EVENT_TIME_COLUMN, pa.array([r["event_time"] for r in rows], _TIMESTAMP)),
        (KEY_COLUMN, pa.array([f"{r['idempotency_key'] or ''}~replay-{r['dead_letter_id']}" for r in rows])),
        (VERSION_COLUMN, pa.array([r["version_token"] for r in rows], pa.int64())),
    ]
    fields = [*user_schema, *(pa.field(name, array.type) for name, array in hidden)]
    return pa.Table.from_arrays([*user.columns, *(array for _, array in hidden)], schema=pa.schema(fields))


async def replay_dead_letters(
    pool: CatalogPool, tenant_id: TenantId, event_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Give dead letters a second life in one accepting transaction: their records become new
    segments with new tokens (the dead letters stay, marked replayed, so the watermark never goes
    back) and their original versions; replaying the same dead letter twice is a no-op. Dead
    letters of dropped tables are not replayed (their rows are key-share locked, so a concurrent
    DROP waits)."""
    async with pool.transaction() as tx:
        next_token = await tokens.lock_counter(tx, tenant_id)
        cur = await tx.execute(
            "SELECT d.*, d.payload::text AS payload_text FROM ingest_dead_letter d"
            " JOIN table_def t ON t.table_id = d.table_id AND t.dropped_at IS NULL"
            " WHERE d.tenant_id = %s AND d.dead_letter_id = ANY(%s) AND d.replayed_at IS NULL"
            " ORDER BY d.dead_letter_id FOR UPDATE OF d FOR KEY SHARE OF t",
            (tenant_id, list(event_ids)),
        )
        rows = [dict(r) for r in await cur.fetchall()]
        if not rows:
            return []
        schemas = await tables.schemas_by_version(tx, sorted({TableId(r["table_id"]) for r in rows}))
        replayed = []
        token = next_token
        # In dead-letter order (= original token order within a table): two versions of one key keep theirs.
        for (table_id, version), group in groupby(rows, key=lambda r: (r["table_id"], r["schema_version"])):
            members = list(group)
            data = encode_segment(_replay_table(members, schemas[(TableId(table_id), version)]))
            await tx.execute(
                "INSERT INTO ingest_segment (tenant_id, table_id, schema_version, min_token, max_token, min_version,"
                " record_count, byte_count, data, trace_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (tenant_id, table_id, version, token, token + len(members) - 1,
                 min(m["version_token"] for m in members), len(members), len(data), data, members[0]["trace_id"]),
            )
            for offset, member in enumerate(members):
                replayed.append({"event_id": member["dead_letter_id"], "visibility_token": token + offset})
            token += len(members)
        await tx.execute(
            "UPDATE ingest_dead_letter d SET replayed_at = now(), replay_token = r.token"
            " FROM unnest(%s::bigint[], %s::bigint[]) AS r(id, token) WHERE d.dead_letter_id = r.id",
            ([r["event_id"] for r in replayed], [r["visibility_token"] for r in replayed]),
        )
        await tokens.advance_counter(tx, tenant_id, token)
        await tx.execute("SELECT pg_notify(%s, '')", (INGEST_CHANNEL,))
    return sorted(replayed, key=lambda r: r["event_id"])


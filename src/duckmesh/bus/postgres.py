"""The PostgreSQL ingest bus: segments in ``ingest_segment`` (one row per accepted request, the
records as one compressed Arrow IPC stream), idempotency keys in ``ingest_key`` and
``ingest_request``, dead letters in ``ingest_dead_letter`` — all in the catalog database (ADR 0008).

A group of requests of one tenant is accepted in one transaction: one counter lock, one statement
for the keys it must know, one statement that writes every segment, key and request row, one
commit. Claims use ``FOR UPDATE SKIP LOCKED`` so coordinators never block each other; new work is
announced with NOTIFY in the accepting transaction (delivered on commit). Segments are resolved
only inside snapshot commits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from psycopg.types.json import Jsonb

from duckmesh.bus.base import Claim, ClaimedSegment, DeadLetter, NewSegment, PublishOutcome, encode_segment
from duckmesh.catalog import tokens
from duckmesh.catalog.commit import CommitContext, Step
from duckmesh.catalog.db import AsyncConn, CatalogPool
from duckmesh.catalog.liveness import ABANDONED, LIVE_KEYS, Liveness
from duckmesh.catalog.notify import INGEST_CHANNEL, Listener
from duckmesh.domain import SegmentId, TableId, TenantId, VisibilityToken
from duckmesh.errors import IdempotencyKeyReused, LeaseLost, SchemaChanged, TableNotFound

_MAX_SEGMENTS_PER_CLAIM = 10_000

_CLAIM = """
WITH picked AS (
    SELECT segment_id, record_count, byte_count FROM ingest_segment
    WHERE state = 'accepted' ORDER BY segment_id LIMIT %(max_segments)s FOR UPDATE SKIP LOCKED
), sized AS (
    SELECT segment_id, sum(record_count) OVER w AS events, sum(byte_count) OVER w AS bytes
    FROM picked WINDOW w AS (ORDER BY segment_id)
), chosen AS (
    SELECT segment_id FROM sized
    WHERE (events <= %(max_events)s AND bytes <= %(max_bytes)s) OR segment_id = (SELECT min(segment_id) FROM sized)
)
UPDATE ingest_segment g
SET state = 'claimed', lease_owner = %(owner)s, claim_id = %(claim_id)s, attempts = g.attempts + 1,
    lease_until = clock_timestamp() + make_interval(secs => %(lease)s), liveness_key = %(live)s
FROM chosen c WHERE g.segment_id = c.segment_id
RETURNING g.segment_id, g.tenant_id, g.table_id, g.schema_version, g.min_token, g.record_count, g.attempts,
          g.trace_id, g.ingested_at, g.lease_until, g.data
"""

_CLAIM_EXHAUSTED = f"""
WITH {LIVE_KEYS}
UPDATE ingest_segment SET lease_owner = %(owner)s, claim_id = %(claim_id)s,
    lease_until = clock_timestamp() + make_interval(secs => %(lease)s), liveness_key = %(live)s
WHERE segment_id IN (
    SELECT segment_id FROM ingest_segment WHERE tenant_id = %(t)s AND state = 'claimed'
      AND {ABANDONED} AND attempts >= %(max)s
    ORDER BY segment_id LIMIT 1000 FOR UPDATE SKIP LOCKED)
RETURNING segment_id, tenant_id, table_id, schema_version, min_token, record_count, attempts, trace_id,
          ingested_at, lease_until, data
"""

# Held by the claim: claimed by it, by its owner, under a lease the database clock says is live.
_HELD = (
    "claim_id = %(claim)s AND state = 'claimed' AND lease_owner = %(owner)s AND lease_until > clock_timestamp()"
)

_WRITE = """
WITH seg AS (
    INSERT INTO ingest_segment (tenant_id, table_id, schema_version, min_token, max_token, min_version,
                                record_count, byte_count, data, trace_id)
    SELECT %(t)s, * FROM unnest(%(tables)s::bigint[], %(versions)s::int[], %(mins)s::bigint[], %(maxs)s::bigint[],
                                %(min_versions)s::bigint[], %(counts)s::int[], %(sizes)s::int[], %(data)s::bytea[],
                                %(traces)s::text[])
), k AS (
    INSERT INTO ingest_key (tenant_id, table_id, idempotency_key, payload_hash, token)
    SELECT %(t)s, * FROM unnest(%(key_tables)s::bigint[], %(keys)s::text[], %(digests)s::bytea[],
                                %(key_tokens)s::bigint[])
), r AS (
    INSERT INTO ingest_request (tenant_id, table_id, request_key, body_hash, max_token, receipt)
    SELECT %(t)s, * FROM unnest(%(req_tables)s::bigint[], %(req_keys)s::text[], %(req_hashes)s::bytea[],
                                %(req_tokens)s::bigint[], %(receipts)s::jsonb[])
), c AS (
    UPDATE tenant_counter SET next_visibility_token = %(next)s WHERE tenant_id = %(t)s
)
SELECT pg_notify(%(channel)s, '')
"""


@dataclass
class _Group:
    """What one accepting transaction writes, built request by request."""

    next_token: int
    segments: list[tuple[NewSegment, int, bytes, int]]  # (segment, first token, data, record count)
    keys: list[tuple[TableId, str, bytes, int]]
    requests: list[tuple[TableId, str, bytes, int, dict[str, Any]]]

    def params(self, tenant_id: TenantId) -> dict[str, Any]:
        segs = self.segments
        return {
            "t": tenant_id, "next": self.next_token, "channel": INGEST_CHANNEL,
            "tables": [s.table_id for s, *_ in segs], "versions": [s.schema_version for s, *_ in segs],
            "mins": [first for _, first, _, _ in segs], "maxs": [first + n - 1 for _, first, _, n in segs],
            "min_versions": [first if s.min_version is None else s.min_version for s, first, _, _ in segs],
            "counts": [n for *_, n in segs], "sizes": [len(d) for _, _, d, _ in segs],
            "data": [d for _, _, d, _ in segs], "traces": [s.trace_id for s, *_ in segs],
            "key_tables": [k[0] for k in self.keys], "keys": [k[1] for k in self.keys],
            "digests": [k[2] for k in self.keys], "key_tokens": [k[3] for k in self.keys],
            "req_tables": [r[0] for r in self.requests], "req_keys": [r[1] for r in self.requests],
            "req_hashes": [r[2] for r in self.requests], "req_tokens": [r[3] for r in self.requests],
            "receipts": [Jsonb(r[4]) for r in self.requests],
        }


class PostgresBus:
    def __init__(self, pool: CatalogPool, listener: Listener | None = None, liveness: Liveness | None = None) -> None:
        self._pool = pool
        self._listener = listener
        self._liveness = liveness  # claims made under it are taken over as soon as it is lost
        self._seen_generation = -1

    async def publish(self, tenant_id: TenantId, segments: Sequence[NewSegment]) -> list[PublishOutcome | Exception]:
        async with self._pool.transaction() as tx:
            # The counter row lock serializes accepting transactions of this tenant: tokens are
            # assigned and become visible in commit order, and concurrent retries of one key see
            # each other's committed rows. Table rows are key-share locked: nothing is accepted
            # into a table being dropped.
            table_ids = sorted({s.table_id for s in segments})
            next_token, versions = await tokens.begin_group_accept(tx, tenant_id, table_ids)
            known_keys = await _known_keys(tx, tenant_id, segments)
            known_requests = await _known_requests(tx, tenant_id, segments)
            group = _Group(next_token, [], [], [])
            outcomes = [_accept(group, s, versions, known_keys, known_requests) for s in segments]
            if group.next_token != next_token or group.requests:
                await tx.execute(_WRITE, group.params(tenant_id))
        return outcomes

    async def claim(self, owner: str, max_events: int, max_bytes: int, lease_seconds: float) -> Claim | None:
        async with self._pool.transaction() as tx:
            claim_id = await _new_claim(tx, owner, lease_seconds)
            cur = await tx.execute(_CLAIM, {
                "max_segments": min(max_events, _MAX_SEGMENTS_PER_CLAIM), "max_events": max_events,
                "max_bytes": max_bytes, "owner": owner, "claim_id": claim_id, "lease": lease_seconds,
                "live": self._live_key(),
            })
            rows = await cur.fetchall()
            return await _finish_claim(tx, claim_id, owner, rows)

    async def claim_exhausted(
        self, owner: str, tenant_id: TenantId, max_attempts: int, lease_seconds: float
    ) -> Claim | None:
        async with self._pool.transaction() as tx:
            claim_id = await _new_claim(tx, owner, lease_seconds)
            cur = await tx.execute(_CLAIM_EXHAUSTED, {"owner": owner, "claim_id": claim_id, "lease": lease_seconds,
                                                      "t": tenant_id, "max": max_attempts, "live": self._live_key()})
            return await _finish_claim(tx, claim_id, owner, await cur.fetchall())

    async def extend(self, claim: Claim, lease_seconds: float) -> None:
        if not claim.held:
            return
        async with self._pool.transaction() as tx:
            cur = await tx.execute(
                "UPDATE ingest_segment SET lease_until = clock_timestamp() + make_interval(secs => %(lease)s)"
                f" WHERE {_HELD} RETURNING lease_until",
                {"lease": lease_seconds, "claim": claim.claim_id, "owner": claim.owner},
            )
            rows = await cur.fetchall()
            # Only what the claim still holds counts: segments already committed, failed or given
            # back are no longer claimed, and that is no loss of the lease.
            if len(rows) != len(claim.held):
                raise LeaseLost("the claim lost some of its segments", claim_id=claim.claim_id,
                                held=len(claim.held), still_leased=len(rows))
            await tx.execute("UPDATE ingest_claim_batch SET lease_until = %s WHERE claim_id = %s",
                             (rows[0]["lease_until"], claim.claim_id))
            claim.lease_until = rows[0]["lease_until"]

    def commit_step(self, claim: Claim, tenant_id: TenantId, segment_ids: Sequence[SegmentId]) -> Step:
        return _CommitClaimed(claim.claim_id, claim.owner, tenant_id, len(set(segment_ids)))

    def dead_letter_step(self, letters: Sequence[DeadLetter]) -> Step:
        return _WriteDeadLetters(tuple(letters))

    def fail_step(self, claim: Claim, segment_ids: Sequence[SegmentId], reason: str) -> Step:
        return _FailClaimed(claim.claim_id, claim.owner, tuple(sorted(set(segment_ids))), reason[:1000])

    async def release(self, claim: Claim, segment_ids: Sequence[SegmentId]) -> None:
        async with self._pool.transaction() as tx:
            await tx.execute(
                "UPDATE ingest_segment SET state = 'accepted', lease_owner = NULL, lease_until = NULL,"
                " liveness_key = NULL, attempts = greatest(attempts - 1, 0)"
                f" WHERE segment_id = ANY(%(ids)s) AND {_HELD}",
                {"ids": list(segment_ids), "claim": claim.claim_id, "owner": claim.owner},
            )
            await tx.execute(f"NOTIFY {INGEST_CHANNEL}")
        claim.let_go(segment_ids)

    def _live_key(self) -> int | None:
        return self._liveness.key if self._liveness is not None else None

    async def requeue_expired(self, max_attempts: int) -> list[TenantId]:
        async with self._pool.transaction() as tx:
            cur = await tx.execute(
                f"WITH {LIVE_KEYS} UPDATE ingest_segment SET state = 'accepted', lease_owner = NULL,"
                " lease_until = NULL, liveness_key = NULL"
                f" WHERE state = 'claimed' AND {ABANDONED} AND attempts < %s",
                (max_attempts,),
            )
            if cur.rowcount:
                await tx.execute(f"NOTIFY {INGEST_CHANNEL}")
            cur = await tx.execute(
                f"WITH {LIVE_KEYS} SELECT DISTINCT tenant_id FROM ingest_segment"
                f" WHERE state = 'claimed' AND {ABANDONED} AND attempts >= %s",
                (max_attempts,),
            )
            return [TenantId(r["tenant_id"]) for r in await cur.fetchall()]

    def fail_table_step(self, tenant_id: TenantId, table_id: TableId, reason: str) -> Step:
        return _FailTable(tenant_id, table_id, reason)

    async def failed_tokens(self, tenant_id: TenantId, tokens_: Sequence[int]) -> list[int]:
        if not tokens_:
            return []
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT t FROM unnest(%(tokens)s::bigint[]) AS t WHERE"
                " EXISTS (SELECT 1 FROM ingest_dead_letter d WHERE d.tenant_id = %(t)s AND d.visibility_token = t)"
                " OR EXISTS (SELECT 1 FROM ingest_segment g WHERE g.tenant_id = %(t)s AND g.state = 'failed'"
                "   AND g.max_token >= t AND g.min_token <= t AND g.failure_reason IS NOT NULL"
                "   AND NOT EXISTS (SELECT 1 FROM ingest_dead_letter d2 WHERE d2.segment_id = g.segment_id))"
                " ORDER BY t",
                {"t": tenant_id, "tokens": list(tokens_)},
            )
            return [r["t"] for r in await cur.fetchall()]

    async def wait_for_work(self, timeout: float) -> None:
        # Remembering the last generation seen means a NOTIFY that arrived while the caller was
        # busy (between its last claim and this wait) wakes it at once instead of being lost.
        if self._listener is None:
            await asyncio.sleep(timeout)
            return
        self._seen_generation = await self._listener.wait(self._seen_generation, timeout)

    def work_generation(self) -> int:
        return self._listener.generation if self._listener is not None else 0

    async def lag(self, tenant_id: TenantId) -> dict[str, Any]:
        # Partial indexes only (unresolved segments, open dead letters), never the history.
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT coalesce(sum(record_count) FILTER (WHERE state = 'accepted'), 0)::bigint AS pending_events,"
                " coalesce(sum(record_count) FILTER (WHERE state = 'claimed'), 0)::bigint AS claimed_events,"
                " (extract(epoch FROM now() - min(ingested_at)) * 1000)::bigint AS oldest_pending_age_ms,"
                " (SELECT count(*) FROM ingest_dead_letter d WHERE d.tenant_id = %(t)s AND d.replayed_at IS NULL)"
                "   AS failed_events"
                " FROM ingest_segment WHERE tenant_id = %(t)s AND state IN ('accepted', 'claimed')",
                {"t": tenant_id},
            )
            row = await cur.fetchone()
        assert row is not None
        return dict(row)


async def _new_claim(tx: AsyncConn, owner: str, lease_seconds: float) -> int:
    cur = await tx.execute(
        "INSERT INTO ingest_claim_batch (owner, lease_until, event_count, byte_count)"
        " VALUES (%s, clock_timestamp() + make_interval(secs => %s), 0, 0) RETURNING claim_id",
        (owner, lease_seconds),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["claim_id"])


async def _finish_claim(tx: AsyncConn, claim_id: int, owner: str, rows: list[dict[str, Any]]) -> Claim | None:
    if not rows:
        await tx.execute("DELETE FROM ingest_claim_batch WHERE claim_id = %s", (claim_id,))
        return None
    claim = Claim(claim_id, owner, rows[0]["lease_until"], [_claimed(r) for r in rows])
    await tx.execute(
        "UPDATE ingest_claim_batch SET event_count = %s, byte_count = %s WHERE claim_id = %s",
        (claim.record_count, sum(len(s.data) for s in claim.segments), claim_id),
    )
    return claim


async def _known_keys(
    tx: AsyncConn, tenant_id: TenantId, segments: Sequence[NewSegment]
) -> dict[tuple[TableId, str], tuple[bytes | None, int]]:
    """The stored keys among the group's records: one index probe per key, whatever plan
    PostgreSQL caches for the prepared statement."""
    tables = [s.table_id for s in segments for k in s.keys if k is not None]
    keys = [k for s in segments for k in s.keys if k is not None]
    if not keys:
        return {}
    cur = await tx.execute(
        "SELECT k.table_id, k.idempotency_key, k.payload_hash, k.token"
        " FROM unnest(%s::bigint[], %s::text[]) AS p(table_id, key) CROSS JOIN LATERAL ("
        "   SELECT table_id, idempotency_key, payload_hash, token FROM ingest_key"
        "   WHERE tenant_id = %s AND table_id = p.table_id AND idempotency_key = p.key) k",
        (tables, keys, tenant_id),
    )
    return {(TableId(r["table_id"]), r["idempotency_key"]): (None if r["payload_hash"] is None
                                                            else bytes(r["payload_hash"]), r["token"])
            for r in await cur.fetchall()}


async def _known_requests(
    tx: AsyncConn, tenant_id: TenantId, segments: Sequence[NewSegment]
) -> dict[tuple[TableId, str], tuple[bytes, dict[str, Any]]]:
    wanted = [(s.table_id, s.request_key) for s in segments if s.request_key is not None]
    if not wanted:
        return {}
    cur = await tx.execute(
        "SELECT r.table_id, r.request_key, r.body_hash, r.receipt"
        " FROM unnest(%s::bigint[], %s::text[]) AS p(table_id, key) JOIN ingest_request r"
        "   ON r.tenant_id = %s AND r.table_id = p.table_id AND r.request_key = p.key",
        ([t for t, _ in wanted], [k for _, k in wanted], tenant_id),
    )
    return {(TableId(r["table_id"]), r["request_key"]): (bytes(r["body_hash"]), r["receipt"])
            for r in await cur.fetchall()}


def _accept(
    group: _Group, segment: NewSegment, versions: dict[TableId, int],
    known_keys: dict[tuple[TableId, str], tuple[bytes | None, int]],
    known_requests: dict[tuple[TableId, str], tuple[bytes, dict[str, Any]]],
) -> PublishOutcome | Exception:
    """Decide one request of the group: refused, a repeat of an earlier request, or accepted with
    its records' tokens (fresh records consecutive from the group's next token)."""
    version = versions.get(segment.table_id)
    if version is None:
        return TableNotFound("the table was dropped", table_id=segment.table_id)
    if version != segment.schema_version and segment.min_version is None:
        return SchemaChanged("the table's schema changed while the request was validated",
                             schema_version=version)
    request = (segment.table_id, segment.request_key) if segment.request_key is not None else None
    if request is not None and request in known_requests:
        body_hash, receipt = known_requests[request]
        if body_hash != segment.body_hash:
            return IdempotencyKeyReused("Idempotency-Key reused with a different body",
                                        idempotency_key=segment.request_key)
        return PublishOutcome([], [], segment.schema_version, earlier_receipt=receipt)
    assigned, duplicate, fresh, conflicts = _assign(segment, known_keys, group.next_token)
    if conflicts:
        return IdempotencyKeyReused("idempotency key reused with a different op or payload", conflicts=conflicts)
    first = group.next_token
    for index in fresh:
        key = segment.keys[index]
        if key is not None:
            known_keys[(segment.table_id, key)] = (segment.digests[index], assigned[index])
            group.keys.append((segment.table_id, key, segment.digests[index], assigned[index]))
    if fresh:
        data = segment.data if len(fresh) == segment.record_count else _subset(segment.data, fresh)
        group.segments.append((segment, first, data, len(fresh)))
        group.next_token += len(fresh)
    outcome = PublishOutcome([VisibilityToken(t) for t in assigned], duplicate, segment.schema_version)
    if request is not None:
        receipt = {"accepted_count": outcome.accepted_count, "duplicate_count": outcome.duplicate_count,
                   "max_visibility_token": outcome.max_token, "schema_version": segment.schema_version,
                   "status": "partial_duplicate" if outcome.duplicate_count else "accepted"}
        known_requests[request] = (segment.body_hash or b"", receipt)
        group.requests.append((segment.table_id, request[1], segment.body_hash or b"", outcome.max_token, receipt))
    return outcome


def _assign(
    segment: NewSegment, known: dict[tuple[TableId, str], tuple[bytes | None, int]], next_token: int
) -> tuple[list[int], list[bool], list[int], list[int]]:
    """Per record: its token and whether it is a duplicate or a conflict. A key seen before
    (stored, earlier in the group, or earlier in this request) is a duplicate when its digest
    matches (a key carried over from the per-event bus has none and matches anything) and a
    conflict otherwise; fresh records get consecutive tokens in request order."""
    assigned: list[int] = []
    duplicate: list[bool] = []
    fresh: list[int] = []
    conflicts: list[int] = []
    seen: dict[str, tuple[bytes | None, int]] = {}
    for index, (key, digest) in enumerate(zip(segment.keys, segment.digests, strict=True)):
        prior = None if key is None else seen.get(key) or known.get((segment.table_id, key))
        if prior is None:
            token = next_token + len(fresh)
            if key is not None:
                seen[key] = (digest, token)
            fresh.append(index)
            assigned.append(token)
            duplicate.append(False)
        else:
            if prior[0] is not None and prior[0] != digest:
                conflicts.append(index)
            assigned.append(prior[1])
            duplicate.append(True)
    return assigned, duplicate, fresh, conflicts


def _subset(data: bytes, rows: list[int]) -> bytes:
    """A segment's stream restricted to ``rows`` (a request with some duplicate records)."""
    return encode_segment(pa.ipc.open_stream(pa.py_buffer(data)).read_all().take(pa.array(rows, pa.int64())))


def _claimed(row: dict[str, Any]) -> ClaimedSegment:
    return ClaimedSegment(
        SegmentId(row["segment_id"]), TenantId(row["tenant_id"]), TableId(row["table_id"]), row["schema_version"],
        VisibilityToken(row["min_token"]), row["record_count"], row["attempts"], row["trace_id"],
        row["ingested_at"], bytes(row["data"]),
    )


# --- commit steps ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _CommitClaimed:
    """Precondition and effect: the claim still holds exactly ``count`` segments of the tenant under
    a lease unexpired by the database clock; they become committed in the new snapshot. The
    UPDATE locks the rows, so a lease recovery racing this commit waits and then skips them."""

    claim_id: int
    owner: str
    tenant_id: TenantId
    count: int

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        cur = await tx.execute(
            "UPDATE ingest_segment SET state = 'committed', lease_owner = NULL, lease_until = NULL,"
            " resolved_at = now(), snapshot_id = %(s)s, data = NULL"
            f" WHERE tenant_id = %(t)s AND {_HELD}",
            {"s": ctx.snapshot_id, "t": self.tenant_id, "claim": self.claim_id, "owner": self.owner},
        )
        if cur.rowcount != self.count:
            raise LeaseLost("the claim's lease expired or its segments were taken before publication",
                            claim_id=self.claim_id, expected=self.count, held=cur.rowcount)
        ctx.resolved += cur.rowcount


@dataclass(frozen=True)
class _FailClaimed:
    claim_id: int
    owner: str
    segment_ids: tuple[SegmentId, ...]
    reason: str

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        cur = await tx.execute(
            "UPDATE ingest_segment SET state = 'failed', failure_reason = %(reason)s, resolved_at = now(),"
            " lease_owner = NULL, lease_until = NULL, data = NULL"
            f" WHERE segment_id = ANY(%(ids)s) AND {_HELD}",
            {"reason": self.reason, "ids": list(self.segment_ids), "claim": self.claim_id, "owner": self.owner},
        )
        if cur.rowcount != len(self.segment_ids):
            raise LeaseLost("the claim lost segments it was failing", claim_id=self.claim_id)
        ctx.resolved += cur.rowcount


@dataclass(frozen=True)
class _WriteDeadLetters:
    letters: tuple[DeadLetter, ...]

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        if not self.letters:
            return
        rows = self.letters
        await tx.execute(
            "INSERT INTO ingest_dead_letter (tenant_id, table_id, segment_id, visibility_token, version_token,"
            " idempotency_key, op, payload, schema_version, event_time, attempts, failure_reason, trace_id)"
            " SELECT %(t)s, * FROM unnest(%(tables)s::bigint[], %(segments)s::bigint[], %(tokens)s::bigint[],"
            "  %(versions)s::bigint[], %(keys)s::text[], %(ops)s::text[], %(payloads)s::json[], %(schemas)s::int[],"
            "  %(times)s::timestamptz[], %(attempts)s::int[], %(reasons)s::text[], %(traces)s::text[])",
            {"t": ctx.tenant_id, "tables": [r.table_id for r in rows], "segments": [r.segment_id for r in rows],
             "tokens": [r.token for r in rows], "versions": [r.version for r in rows],
             "keys": [r.idempotency_key for r in rows], "ops": [r.op for r in rows],
             "payloads": [r.payload_json for r in rows], "schemas": [r.schema_version for r in rows],
             "times": [r.event_time for r in rows], "attempts": [r.attempts for r in rows],
             "reasons": [r.reason[:1000] for r in rows], "traces": [r.trace_id for r in rows]},
        )


@dataclass(frozen=True)
class _FailTable:
    tenant_id: TenantId
    table_id: TableId
    reason: str

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        cur = await tx.execute(
            "UPDATE ingest_segment SET state = 'failed', failure_reason = %s, resolved_at = now(),"
            " lease_owner = NULL, lease_until = NULL, data = NULL"
            " WHERE tenant_id = %s AND table_id = %s AND state IN ('accepted', 'claimed')",
            (self.reason, self.tenant_id, self.table_id),
        )
        ctx.resolved += cur.rowcount


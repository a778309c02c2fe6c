"""The ``IngestBus`` port. Every backend must pass ``tests/contract/test_bus_contract.py`` unchanged.

The bus is event transport: token allocation, the watermark rule and snapshot publication are the
catalog's (``catalog/tokens.py``, ``catalog/commit.py``). It moves *segments*: the validated
records of one accepted request, columnar (an Arrow table), with a contiguous token range.
Semantics every backend keeps (CONSISTENCY.md):
- ``publish`` stores the segments of a group of requests of one tenant durably in one atomic step
  that also assigns their visibility tokens (through the catalog's counter lock): per tenant,
  gap-free and in commit order, each request's records consecutive and in request order.
  Records whose idempotency key is known with the same digest are duplicates (the original
  token, not stored again); a known key with another digest refuses that request only. A
  request-level key returns the first request's receipt. A dropped table accepts nothing.
- ``claim`` hands out accepted segments under a time-limited lease; a segment is held by at most
  one live claim. Expired leases return segments to the pool (``requeue_expired``).
- Segment state changes that resolve records (committed, failed) happen only as steps of a
  snapshot commit, so records, snapshot and watermark change together or not at all. Each step
  re-checks, with the database clock, that the claim still holds its segments under an
  unexpired lease.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import pyarrow as pa

from duckmesh.catalog.commit import Step
from duckmesh.domain import SegmentId, TableId, TenantId, VisibilityToken


@dataclass(frozen=True)
class NewSegment:
    """One request's validated records: the user columns at their storage types plus ``_dm_op``,
    ``_dm_event_time``, ``_dm_key`` (and ``_dm_version`` for replays), as an Arrow IPC stream."""

    table_id: TableId
    schema_version: int
    data: bytes
    record_count: int
    keys: Sequence[str | None]  # per record: its idempotency key (None: not deduplicated by record)
    digests: Sequence[bytes]  # per record: a digest of the canonical record (op, values, explicit event time)
    request_key: str | None = None  # the Idempotency-Key header
    body_hash: bytes | None = None
    trace_id: str | None = None
    min_version: int | None = None  # replays: the lowest original token among the records


def encode_segment(table: pa.Table) -> bytes:
    """A segment's records as stored on the bus: one Arrow IPC stream, zstd-compressed."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


@dataclass(frozen=True)
class PublishOutcome:
    tokens: list[VisibilityToken]
    duplicate: list[bool]
    schema_version: int
    earlier_receipt: dict[str, Any] | None = None  # a repeated request key: the first request's receipt

    @property
    def accepted_count(self) -> int:
        return self.duplicate.count(False)

    @property
    def duplicate_count(self) -> int:
        return self.duplicate.count(True)

    @property
    def max_token(self) -> VisibilityToken:
        return max(self.tokens) if self.tokens else VisibilityToken(0)


@dataclass(frozen=True)
class ClaimedSegment:
    segment_id: SegmentId
    tenant_id: TenantId
    table_id: TableId
    schema_version: int
    min_token: VisibilityToken
    record_count: int
    attempts: int
    trace_id: str | None
    ingested_at: datetime
    data: bytes

    def records(self) -> pa.Table:
        """The segment's records (decoding is CPU work: call it off the event loop)."""
        return pa.ipc.open_stream(io.BytesIO(self.data)).read_all()


@dataclass
class Claim:
    claim_id: int
    owner: str
    lease_until: datetime
    segments: list[ClaimedSegment] = field(default_factory=list)
    held: set[SegmentId] = field(default_factory=set)  # segments the claim still holds

    def __post_init__(self) -> None:
        if not self.held:
            self.held = {s.segment_id for s in self.segments}

    @property
    def record_count(self) -> int:
        return sum(s.record_count for s in self.segments)

    def let_go(self, segment_ids: Sequence[SegmentId]) -> None:
        """The claim no longer holds these (committed, failed or released)."""
        self.held.difference_update(segment_ids)


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be materialized, in canonical JSON (listable and replayable)."""

    table_id: TableId
    segment_id: SegmentId | None
    token: int
    version: int
    idempotency_key: str | None
    op: str
    payload_json: str
    schema_version: int
    event_time: datetime
    attempts: int
    reason: str
    trace_id: str | None


class IngestBus(Protocol):
    async def publish(self, tenant_id: TenantId, segments: Sequence[NewSegment]) -> list[PublishOutcome | Exception]:
        """Store a group of requests of one tenant in one atomic step; one outcome per request, in
        order: a PublishOutcome, or the error that refused that request alone (IdempotencyKeyReused
        with context ``conflicts``: record indexes; TableNotFound for a dropped table; SchemaChanged
        when the table's schema version moved since validation). Errors of the whole step raise."""
        ...

    async def claim(self, owner: str, max_events: int, max_bytes: int, lease_seconds: float) -> Claim | None:
        """Lease accepted segments, oldest first, up to about ``max_events`` records and
        ``max_bytes`` (at least one segment); None when there is no work."""
        ...

    async def extend(self, claim: Claim, lease_seconds: float) -> None:
        """Push the lease of the segments the claim still holds forward; LeaseLost when any of them
        is no longer held under an unexpired lease."""
        ...

    def commit_step(self, claim: Claim, tenant_id: TenantId, segment_ids: Sequence[SegmentId]) -> Step:
        """Commit precondition and effect: ``segment_ids`` are exactly the tenant's segments the claim
        still holds, under a lease unexpired by the database clock; they become committed."""
        ...

    def dead_letter_step(self, letters: Sequence[DeadLetter]) -> Step:
        """Commit effect: records that could not be materialized become dead letters."""
        ...

    def fail_step(self, claim: Claim, segment_ids: Sequence[SegmentId], reason: str) -> Step:
        """Commit precondition and effect: the claim still holds these segments; they become failed
        (their records are dead letters written by ``dead_letter_step`` in the same commit)."""
        ...

    async def release(self, claim: Claim, segment_ids: Sequence[SegmentId]) -> None:
        """Give segments back without using up an attempt (the failure was not theirs, e.g. the
        object store was down, or the commit lost a race)."""
        ...

    async def requeue_expired(self, max_attempts: int) -> list[TenantId]:
        """Return segments of expired leases with attempts left to the pool; return the tenants
        that have expired segments out of attempts (to be dead-lettered by ``claim_exhausted``)."""
        ...

    async def claim_exhausted(
        self, owner: str, tenant_id: TenantId, max_attempts: int, lease_seconds: float
    ) -> Claim | None:
        """Lease the tenant's expired segments that are out of attempts, to dead-letter them."""
        ...

    def fail_table_step(self, tenant_id: TenantId, table_id: TableId, reason: str) -> Step:
        """A commit effect of a DROP: every unresolved segment of the table becomes failed."""
        ...

    async def failed_tokens(self, tenant_id: TenantId, tokens: Sequence[int]) -> list[int]:
        """Which of ``tokens`` belong to records that failed (dead letters, dropped tables)."""
        ...

    async def wait_for_work(self, timeout: float) -> None:
        """Return when new segments may be available, or after ``timeout`` seconds."""
        ...

    def work_generation(self) -> int:
        """A counter that moves whenever new work was announced (cheap, no I/O)."""
        ...

    async def lag(self, tenant_id: TenantId) -> dict[str, Any]:
        """Pending, claimed and failed record counts and the oldest pending age for the tenant."""
        ...

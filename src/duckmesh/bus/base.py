"""The ``IngestBus`` port. Every backend must pass ``tests/contract/test_bus_contract.py`` unchanged.

Semantics every backend keeps (CONSISTENCY.md):
- ``publish`` stores a request's events durably in one atomic step that also assigns their
  visibility tokens: per tenant, gap-free and in commit order. Duplicates (same idempotency key,
  same op and payload hash) get the original event's token and are not stored again.
- ``claim`` hands out accepted events under a time-limited lease; an event is held by at most
  one live claim. Expired leases return the events to the pool (``requeue_expired``).
- ``ack`` runs inside the catalog transaction that publishes the snapshot containing the events,
  so event state and snapshot change together or not at all.
- ``resolved_watermarks`` answers, inside that same transaction, the largest token T such that
  every event with token <= T is committed or failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from duckmesh.domain import EventId, Op, TableId, TenantId, VisibilityToken


@dataclass(frozen=True)
class NewEvent:
    """One validated record of an ingest request, in canonical form."""

    idempotency_key: str
    op: Op
    payload_json: str
    payload_hash: bytes
    event_time: datetime


@dataclass(frozen=True)
class PublishOutcome:
    tokens: list[VisibilityToken]
    duplicate: list[bool]

    @property
    def accepted_count(self) -> int:
        return self.duplicate.count(False)

    @property
    def duplicate_count(self) -> int:
        return self.duplicate.count(True)

    @property
    def max_token(self) -> VisibilityToken:
        return max(self.tokens)


@dataclass(frozen=True)
class ClaimedEvent:
    event_id: EventId
    tenant_id: TenantId
    table_id: TableId
    token: VisibilityToken
    op: Op
    payload_json: str
    schema_version: int
    event_time: datetime
    attempts: int
    trace_id: str | None
    ingested_at: datetime


@dataclass
class Claim:
    claim_id: int
    owner: str
    lease_until: datetime
    events: list[ClaimedEvent] = field(default_factory=list)

    @property
    def byte_count(self) -> int:
        return sum(len(e.payload_json) for e in self.events)


@dataclass(frozen=True)
class Watermarks:
    tenant: VisibilityToken
    tables: dict[TableId, VisibilityToken]
    issued: VisibilityToken


@dataclass(frozen=True)
class FailedEvent:
    event_id: EventId
    tenant_id: TenantId
    table_id: TableId
    token: VisibilityToken
    reason: str


class IngestBus(Protocol):
    async def publish(
        self,
        tenant_id: TenantId,
        table_id: TableId,
        schema_version: int,
        events: Sequence[NewEvent],
        trace_id: str | None = None,
    ) -> PublishOutcome:
        """Store events atomically with their tokens. Raises IdempotencyKeyReused (context
        ``conflicts``: record indexes) when a key was used with another op or payload; nothing
        is stored then. Raises TenantNotFound for an unknown tenant."""
        ...

    async def claim(self, owner: str, max_events: int, max_bytes: int, lease_seconds: float) -> Claim | None:
        """Lease up to ``max_events`` accepted events (and about ``max_bytes``, at least one
        event), oldest first; None when there is no work."""
        ...

    async def extend(self, claim: Claim, lease_seconds: float) -> None:
        """Push the claim's lease forward. Raises LeaseLost when any of its events is no
        longer held by this claim."""
        ...

    async def ack(self, tx: Any, claim: Claim, event_ids: Sequence[EventId], snapshot_id: int) -> None:
        """Mark events committed inside the caller's catalog transaction ``tx``. ``event_ids``
        are all events of one tenant that the claim still holds (the others were nacked or
        released first). Raises LeaseLost (and the caller rolls back) when the claim no longer
        holds exactly those."""
        ...

    async def nack(
        self, claim: Claim, event_ids: Sequence[EventId], reason: str, max_attempts: int
    ) -> list[FailedEvent]:
        """Give events back for another attempt; those that used ``max_attempts`` become
        failed (dead-lettered) with ``reason`` and are returned. Events no longer held by the
        claim are left alone."""
        ...

    async def release(self, claim: Claim, event_ids: Sequence[EventId]) -> None:
        """Give events back without using up an attempt (the failure was not theirs, e.g. the
        object store was down)."""
        ...

    async def requeue_expired(self, max_attempts: int) -> list[FailedEvent]:
        """Return events of expired leases to the pool; those out of attempts become failed."""
        ...

    async def fail_table(self, tx: Any, tenant_id: TenantId, table_id: TableId, reason: str) -> int:
        """Inside ``tx``: fail every unresolved event of a table (it is being dropped)."""
        ...

    async def wait_for_work(self, timeout: float) -> None:
        """Return when new events may be available, or after ``timeout`` seconds."""
        ...

    async def resolved_watermarks(self, tx: Any, tenant_id: TenantId) -> Watermarks:
        """Inside ``tx``: the tenant's and each table's watermark from the bus's point of view."""
        ...

    async def lag(self, tenant_id: TenantId) -> dict[str, Any]:
        """Pending, claimed and failed counts and the oldest pending age for the tenant."""
        ...

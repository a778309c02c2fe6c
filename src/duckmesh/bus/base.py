"""The ``IngestBus`` port. Every backend must pass ``tests/contract/test_bus_contract.py`` unchanged.

The bus is event transport: token allocation, the watermark rule and snapshot publication are the
catalog's (``catalog/tokens.py``, ``catalog/commit.py``). Semantics every backend keeps
(CONSISTENCY.md):
- ``publish`` stores a request's events durably in one atomic step that also assigns their
  visibility tokens (through the catalog's counter lock): per tenant, gap-free and in commit
  order. Duplicates (same idempotency key, same op and payload hash) get the original event's
  token and are not stored again. A dropped table accepts nothing.
- ``claim`` hands out accepted events under a time-limited lease; an event is held by at most one
  live claim. Expired leases return the events to the pool (``requeue_expired``).
- Event state changes that resolve events (committed, failed) happen only as steps of a snapshot
  commit (``commit_step``, ``fail_step``, ``fail_exhausted_step``, ``fail_table_step``), so event
  state, snapshot and watermark change together or not at all. Each step re-checks, with the
  database clock, that the claim still holds its events under an unexpired lease.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from duckmesh.catalog.commit import Step
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
    version: VisibilityToken  # orders versions of a key: the token, or a replayed event's original one
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
    held: set[EventId] = field(default_factory=set)  # events the claim still holds (not yet resolved or returned)

    def __post_init__(self) -> None:
        if not self.held:
            self.held = {e.event_id for e in self.events}

    @property
    def byte_count(self) -> int:
        return sum(len(e.payload_json) for e in self.events)

    def let_go(self, event_ids: Sequence[EventId]) -> None:
        """The claim no longer holds these (committed, failed, nacked or released)."""
        self.held.difference_update(event_ids)


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
        is stored then. Raises TenantNotFound / TableNotFound (the table was dropped)."""
        ...

    async def claim(self, owner: str, max_events: int, max_bytes: int, lease_seconds: float) -> Claim | None:
        """Lease up to ``max_events`` accepted events (and about ``max_bytes``, at least one
        event), oldest first; None when there is no work."""
        ...

    async def extend(self, claim: Claim, lease_seconds: float) -> None:
        """Push the lease of the events the claim still holds (``claim.held``) forward. Raises
        LeaseLost when any of them is no longer held under an unexpired lease."""
        ...

    def commit_step(self, claim: Claim, tenant_id: TenantId, event_ids: Sequence[EventId]) -> Step:
        """A commit precondition that also marks the events committed: ``event_ids`` must be exactly
        the events of ``tenant_id`` the claim still holds, under a lease unexpired by the database
        clock; otherwise LeaseLost and the commit rolls back."""
        ...

    def fail_step(self, claim: Claim, event_ids: Sequence[EventId], reason: str) -> Step:
        """A commit effect: the claim's events become failed (dead-lettered) with ``reason``;
        LeaseLost unless the claim still holds them all."""
        ...

    async def nack(self, claim: Claim, event_ids: Sequence[EventId], reason: str) -> None:
        """Give events back for another attempt (the attempt counts). Events no longer held by
        the claim are left alone."""
        ...

    async def release(self, claim: Claim, event_ids: Sequence[EventId]) -> None:
        """Give events back without using up an attempt (the failure was not theirs, e.g. the
        object store was down, or the commit lost a race)."""
        ...

    async def requeue_expired(self, max_attempts: int) -> list[TenantId]:
        """Return events of expired leases with attempts left to the pool; return the tenants
        that have expired events out of attempts (to be failed by ``fail_exhausted_step``)."""
        ...

    def fail_exhausted_step(self, tenant_id: TenantId, max_attempts: int) -> Step:
        """A commit effect: the tenant's expired events out of attempts become failed."""
        ...

    def fail_table_step(self, tenant_id: TenantId, table_id: TableId, reason: str) -> Step:
        """A commit effect of a DROP: every unresolved event of the table becomes failed."""
        ...

    async def failed_tokens(self, tenant_id: TenantId, tokens: Sequence[int]) -> list[int]:
        """Which of ``tokens`` belong to failed (dead-lettered) events of the tenant."""
        ...

    async def wait_for_work(self, timeout: float) -> None:
        """Return when new events may be available, or after ``timeout`` seconds."""
        ...

    async def lag(self, tenant_id: TenantId) -> dict[str, Any]:
        """Pending, claimed and failed counts and the oldest pending age for the tenant."""
        ...

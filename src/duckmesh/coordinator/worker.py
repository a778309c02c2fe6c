"""The coordinator loop: claim -> materialize -> publish one snapshot per tenant (commit protocol).

Safety of retries, stalls and crashes:
- Every file is put under a write intent recorded first; the commit takes the intents and the
  claim's events together, both checked against the database clock. A coordinator that stalls
  past its lease (SIGSTOP, VM suspend) can therefore publish nothing: its claim was requeued and
  its intents expired, so orphan cleanup may delete its files and no snapshot will name them.
- The lease and the intents are extended every third of the lease while the batch works; if an
  extension fails the batch is cancelled, visibly (log + metric), never silently.
- Each event is committed (or failed) exactly once, inside the commit that publishes it, so a row
  can never be published twice, and a failure resolves its token in the same transaction that
  advances the watermark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from duckmesh.bus.base import Claim, ClaimedSegment, IngestBus
from duckmesh.catalog import intents, tables, tokens
from duckmesh.catalog.commit import CommitPlan, Step, TablesLive, commit
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator.materialize import Materialized, all_dead, materialize
from duckmesh.datafiles import NewDataFile
from duckmesh.domain import SegmentId, SnapshotKind, TableId, TenantId
from duckmesh.errors import CommitConflict, LeaseLost, NothingToCommit, StorageError
from duckmesh.heartbeat import while_extending
from duckmesh.observability import metrics
from duckmesh.observability.logging import new_trace_id, trace_id_var
from duckmesh.schema import TableSchema
from duckmesh.storage.base import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoordinatorConfig:
    flush_interval: float = 0.2
    max_batch_events: int = 50_000
    max_batch_bytes: int = 64 * 1024 * 1024
    lease_seconds: float = 30.0
    max_attempts: int = 5
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


@dataclass
class _Batch:
    """One claim in progress: commits and lease extensions take ``lock`` in turn, so the extender
    never counts events a commit is resolving at that moment."""

    claim: Claim
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    open_intents: int = 0

    @property
    def intent_owner(self) -> str:
        return f"claim:{self.claim.claim_id}"


class Coordinator:
    def __init__(self, pool: CatalogPool, bus: IngestBus, store: ObjectStore, config: CoordinatorConfig) -> None:
        self._pool = pool
        self._bus = bus
        self._store = store
        self.config = config
        self._schemas: dict[tuple[TableId, int], TableSchema] = {}
        self.batches_published = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set; the batch in hand is finished (or released) first.

        Claims happen at most once per flush interval while work keeps arriving during batches (so
        batches stay efficient under load), immediately when the previous batch was full, and at
        once when a NOTIFY wakes a coordinator that was idle (so a lone writer's write is visible
        in tens of milliseconds).
        """
        log.info("coordinator_started", extra={"owner": self.config.owner})
        next_requeue = 0.0
        last_batch = -1e9
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_requeue:
                await self.resolve_expired()
                # Often enough that a crashed coordinator's claims (its liveness lock gone with its
                # connection) are taken over within about a second, not after the whole lease.
                next_requeue = now + min(max(self.config.lease_seconds / 4, 0.2), 1.0)
            pause = last_batch + self.config.flush_interval - time.monotonic()
            if pause > 0:
                await _sleep_or_stop(stop, pause)
                if stop.is_set():
                    break
            started = time.monotonic()
            generation = self._bus.work_generation()
            try:
                claimed, full = await self.run_once()
            except Exception:
                log.exception("coordinator_batch_failed")
                await _sleep_or_stop(stop, 1.0)
                continue
            if claimed:
                # Adaptive flush: batch (wait out the flush interval) only under load, i.e. when
                # new work arrived while this batch ran; an idle coordinator publishes at once.
                busy = self._bus.work_generation() != generation
                last_batch = started if busy and not full else -1e9
                continue
            waiter = asyncio.ensure_future(self._bus.wait_for_work(self.config.flush_interval))
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (waiter, stopper):
                task.cancel()
        log.info("coordinator_stopped", extra={"owner": self.config.owner})

    async def resolve_expired(self) -> None:
        """Lease recovery: abandoned claims (lease expired, or claimed under a liveness lock no
        session holds any more: the claimant died) go back to the pool; segments out of attempts become dead
        letters and abandoned backfill reservations are failed — each tenant's in one commit
        that also advances its watermark, so a crash can never leave them resolved but the
        watermark stuck."""
        try:
            stuck = set(await self._bus.requeue_expired(self.config.max_attempts))
            async with self._pool.connection() as conn:
                stuck.update(await tokens.tenants_with_expired_reservations(conn))
        except Exception:
            log.exception("requeue_expired_failed")
            return
        for tenant_id in sorted(stuck):
            claim = await self._bus.claim_exhausted(
                self.config.owner, tenant_id, self.config.max_attempts, self.config.lease_seconds)
            effects: list[Step] = [tokens.FailExpiredReservations(tenant_id)]
            if claim is not None:
                reason = f"lease expired {self.config.max_attempts} times (coordinator crashed or stalled)"
                await self._load_schemas(claim.segments)
                letters = await asyncio.to_thread(all_dead, claim.segments, self._schemas, reason)
                effects += [self._bus.dead_letter_step(letters),
                            self._bus.fail_step(claim, [s.segment_id for s in claim.segments], reason)]
            plan = CommitPlan(tenant_id, SnapshotKind.INGEST, self.config.owner, effects=effects,
                              skip_if_nothing_resolved=True, trace_id=new_trace_id())
            with contextlib.suppress(NothingToCommit):
                await commit(self._pool, plan)
                log.warning("expired_work_failed", extra={"tenant_id": tenant_id})

    async def run_once(self) -> tuple[bool, bool]:
        """Claim and process one batch. Returns (claimed anything, the batch was full)."""
        claim = await self._bus.claim(
            self.config.owner, self.config.max_batch_events, self.config.max_batch_bytes, self.config.lease_seconds
        )
        if claim is None:
            return False, False
        await self.process(claim)
        return True, claim.record_count >= self.config.max_batch_events

    async def process(self, claim: Claim) -> None:
        """Materialize and publish a claimed batch while keeping its lease alive."""
        token = trace_id_var.set(new_trace_id())
        started = time.perf_counter()
        metrics.CLAIM_BATCH_SIZE.observe(claim.record_count)
        batch = _Batch(claim)

        async def extend() -> None:
            async with batch.lock:
                await self._bus.extend(claim, self.config.lease_seconds)
                await intents.extend(self._pool, batch.intent_owner, self.config.lease_seconds, batch.open_intents)

        try:
            await while_extending(self._process(batch), extend, self.config.lease_seconds / 3)
        except LeaseLost:
            # The batch is over, visibly: whatever it did not commit is requeued by lease recovery
            # and its unpublished files become orphans once their intents expire.
            metrics.SNAPSHOT_PUBLISH_FAILURES.labels("lease_lost").inc()
            log.error("lease_extension_failed", extra={"claim_id": claim.claim_id}, exc_info=True)
        finally:
            trace_id_var.reset(token)
        metrics.COMMIT_BATCH_LATENCY.observe(time.perf_counter() - started)

    async def _process(self, batch: _Batch) -> None:
        by_tenant: dict[TenantId, list[ClaimedSegment]] = defaultdict(list)
        for segment in batch.claim.segments:
            by_tenant[segment.tenant_id].append(segment)
        await self._load_schemas(batch.claim.segments)
        for tenant_id, segments in by_tenant.items():
            work = await asyncio.to_thread(materialize, segments, self._schemas, batch.claim.claim_id)
            await self._publish(tenant_id, batch, segments, work)

    async def _load_schemas(self, segments: Sequence[ClaimedSegment]) -> None:
        missing = sorted({s.table_id for s in segments if (s.table_id, s.schema_version) not in self._schemas})
        if missing:
            async with self._pool.connection() as conn:
                self._schemas.update(await tables.schemas_by_version(conn, missing))

    async def _publish(
        self, tenant_id: TenantId, batch: _Batch, segments: list[ClaimedSegment], work: Materialized
    ) -> None:
        claim = batch.claim
        segment_ids = [s.segment_id for s in segments]
        files = [f for f, _ in work.files]
        async with batch.lock:
            await intents.record(self._pool, tenant_id, batch.intent_owner, [f.path for f in files],
                                 self.config.lease_seconds)
            batch.open_intents += len(files)
        try:
            for data_file, data in work.files:
                await asyncio.to_thread(self._store.put, data_file.path, data)
        except StorageError:
            log.warning("object_store_unavailable", extra={"tenant_id": tenant_id}, exc_info=True)
            metrics.SNAPSHOT_PUBLISH_FAILURES.labels("storage").inc()
            # No partial snapshot: the whole tenant goes back, our files are abandoned.
            await self._abandon(batch, files, segment_ids)
            return
        requires: list[Step] = [TablesLive(sorted({f.table_id for f in files}))] if files else []
        requires.append(self._bus.commit_step(claim, tenant_id, segment_ids))
        plan = CommitPlan(tenant_id, SnapshotKind.INGEST, self.config.owner, add=files, requires=requires,
                          effects=[self._bus.dead_letter_step(work.dead)] if work.dead else [],
                          trace_id=trace_id_var.get())
        async with batch.lock:
            try:
                snapshot = await commit(self._pool, plan)
            except CommitConflict as exc:
                metrics.SNAPSHOT_PUBLISH_FAILURES.labels(
                    "lease_lost" if isinstance(exc, LeaseLost) else "conflict").inc()
                log.warning("publish_refused", extra={"tenant_id": tenant_id, "error_code": exc.error_code,
                                                       **{k: str(v) for k, v in exc.context.items()}})
                snapshot = None
            else:
                claim.let_go(segment_ids)
                batch.open_intents -= len(files)
        if snapshot is None:
            await self._abandon(batch, files, segment_ids)
            return
        self.batches_published += 1
        self._observe(tenant_id, segments, work, snapshot.snapshot_id, snapshot.max_visibility_token)

    async def _abandon(self, batch: _Batch, files: Sequence[NewDataFile], segment_ids: Sequence[SegmentId]) -> None:
        """A commit that did not happen: our files are never referenced (delete them, best effort,
        and drop their intents) and the segments we still hold go back without using an attempt."""
        for data_file in files:
            with contextlib.suppress(StorageError):
                await asyncio.to_thread(self._store.delete, data_file.path)
        async with batch.lock:
            await intents.release(self._pool, [f.path for f in files])
            batch.open_intents -= len(files)
        held = [s for s in segment_ids if s in batch.claim.held]
        if held:
            await self._bus.release(batch.claim, held)

    def _observe(
        self, tenant_id: TenantId, segments: list[ClaimedSegment], work: Materialized, snapshot_id: int,
        watermark: int,
    ) -> None:
        metrics.SNAPSHOTS_PUBLISHED.labels(str(tenant_id), "ingest").inc()
        metrics.LATEST_VISIBILITY_TOKEN.labels(str(tenant_id)).set(watermark)
        if work.dead:
            metrics.EVENTS_FAILED.labels(str(tenant_id)).inc(len(work.dead))
        if work.records:
            oldest = min(s.ingested_at for s in segments)
            lag = (datetime.now(UTC) - oldest).total_seconds()
            metrics.WRITE_TO_VISIBLE.labels(str(tenant_id)).observe(max(lag, 0.0))
        log.info("snapshot_published", extra={
            "tenant_id": tenant_id, "snapshot_id": snapshot_id, "files": len(work.files),
            "events": work.records, "failed": len(work.dead), "max_visibility_token": watermark,
        })


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)

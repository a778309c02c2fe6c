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
from datetime import UTC, date, datetime

from duckmesh.bus.base import Claim, ClaimedEvent, IngestBus
from duckmesh.catalog import intents, tables, tokens
from duckmesh.catalog.commit import CommitPlan, Step, TablesLive, commit
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator.materialize import build_table
from duckmesh.datafiles import NewDataFile, ParquetFile, ingest_key, write_parquet
from duckmesh.domain import EventId, SnapshotKind, TableId, TenantId
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


@dataclass
class TenantWork:
    """What one tenant's part of a claim produced, ready to commit."""

    files: list[tuple[NewDataFile, bytes]] = field(default_factory=list)
    committed: list[EventId] = field(default_factory=list)
    failed: dict[str, list[EventId]] = field(default_factory=dict)  # reason -> events out of attempts
    retry: dict[str, list[EventId]] = field(default_factory=dict)  # reason -> events with attempts left
    oldest_ingest: datetime | None = None

    def fail(self, events: Sequence[ClaimedEvent], reason: str, max_attempts: int) -> None:
        for event in events:
            target = self.failed if event.attempts >= max_attempts else self.retry
            target.setdefault(reason, []).append(event.event_id)

    @property
    def failed_count(self) -> int:
        return sum(len(ids) for ids in self.failed.values())


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

        Claims happen at most once per flush interval while events keep coming (so batches stay
        efficient), immediately when the previous batch was full, and at once when a NOTIFY
        wakes an idle coordinator (so idle write-to-visible latency is close to zero).
        """
        log.info("coordinator_started", extra={"owner": self.config.owner})
        next_requeue = 0.0
        last_batch = -1e9
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_requeue:
                await self.resolve_expired()
                next_requeue = now + max(self.config.lease_seconds / 4, 0.5)
            pause = last_batch + self.config.flush_interval - time.monotonic()
            if pause > 0:
                await _sleep_or_stop(stop, pause)
                if stop.is_set():
                    break
            started = time.monotonic()
            try:
                claimed, full = await self.run_once()
            except Exception:
                log.exception("coordinator_batch_failed")
                await _sleep_or_stop(stop, 1.0)
                continue
            if claimed:
                last_batch = -1e9 if full else started
                continue
            waiter = asyncio.ensure_future(self._bus.wait_for_work(self.config.flush_interval))
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (waiter, stopper):
                task.cancel()
        log.info("coordinator_stopped", extra={"owner": self.config.owner})

    async def resolve_expired(self) -> None:
        """Lease recovery: expired claims go back to the pool; events out of attempts and abandoned
        backfill reservations are failed — each tenant's in one commit that also advances its
        watermark, so a crash can never leave them resolved but the watermark stuck."""
        try:
            stuck = set(await self._bus.requeue_expired(self.config.max_attempts))
            async with self._pool.connection() as conn:
                stuck.update(await tokens.tenants_with_expired_reservations(conn))
        except Exception:
            log.exception("requeue_expired_failed")
            return
        for tenant_id in sorted(stuck):
            plan = CommitPlan(
                tenant_id, SnapshotKind.INGEST, self.config.owner,
                effects=[self._bus.fail_exhausted_step(tenant_id, self.config.max_attempts),
                         tokens.FailExpiredReservations(tenant_id)],
                skip_if_nothing_resolved=True, trace_id=new_trace_id(),
            )
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
        return True, len(claim.events) >= self.config.max_batch_events

    async def process(self, claim: Claim) -> None:
        """Materialize and publish a claimed batch while keeping its lease alive."""
        token = trace_id_var.set(new_trace_id())
        started = time.perf_counter()
        metrics.CLAIM_BATCH_SIZE.observe(len(claim.events))
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
        by_tenant: dict[TenantId, list[ClaimedEvent]] = defaultdict(list)
        for event in batch.claim.events:
            by_tenant[event.tenant_id].append(event)
        await self._load_schemas(batch.claim.events)
        for tenant_id, events in by_tenant.items():
            work = await self._materialize_tenant(tenant_id, events, batch.claim.claim_id)
            for reason, ids in work.retry.items():
                metrics.CLAIM_RETRIES.inc(len(ids))
                await self._bus.nack(batch.claim, ids, reason)
            if work.committed or work.failed:
                await self._publish(tenant_id, batch, work)

    async def _load_schemas(self, events: Sequence[ClaimedEvent]) -> None:
        missing = sorted({e.table_id for e in events if (e.table_id, e.schema_version) not in self._schemas})
        if missing:
            async with self._pool.connection() as conn:
                self._schemas.update(await tables.schemas_by_version(conn, missing))

    async def _materialize_tenant(self, tenant_id: TenantId, events: list[ClaimedEvent], claim_id: int) -> TenantWork:
        """Build one Parquet file per (table, schema version, day); events that cannot be built are
        isolated one by one and either retried or, out of attempts, failed by the commit."""
        work = TenantWork(oldest_ingest=min(e.ingested_at for e in events))
        groups: dict[tuple[TableId, int, str], list[ClaimedEvent]] = defaultdict(list)
        for event in events:
            groups[(event.table_id, event.schema_version, event.event_time.date().isoformat())].append(event)
        for seq, ((table_id, version, day), group) in enumerate(sorted(groups.items())):
            schema = self._schemas.get((table_id, version))
            if schema is None:
                work.fail(group, "table or schema version no longer exists", 0)
                continue
            good, bad = await asyncio.to_thread(_build_isolating_poison, group, schema)
            for event, reason in bad:
                work.fail([event], reason, self.config.max_attempts)
            if good is None:
                continue
            events_ok, parquet = good
            path = ingest_key(tenant_id, table_id, date.fromisoformat(day), claim_id, seq)
            work.files.append((parquet.new_file(table_id, version, path), parquet.data))
            work.committed += [e.event_id for e in events_ok]
        return work

    async def _publish(self, tenant_id: TenantId, batch: _Batch, work: TenantWork) -> None:
        claim = batch.claim
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
            await self._abandon(batch, files, [*work.committed, *(i for ids in work.failed.values() for i in ids)])
            return
        requires: list[Step] = [TablesLive(sorted({f.table_id for f in files}))] if files else []
        # Failing first: the commit step then finds exactly the events it publishes still held.
        requires += [self._bus.fail_step(claim, ids, reason) for reason, ids in work.failed.items()]
        if work.committed:
            requires.append(self._bus.commit_step(claim, tenant_id, work.committed))
        plan = CommitPlan(tenant_id, SnapshotKind.INGEST, self.config.owner, add=files, requires=requires,
                          trace_id=trace_id_var.get())
        async with batch.lock:
            try:
                snapshot = await commit(self._pool, plan)
            except CommitConflict as exc:
                metrics.SNAPSHOT_PUBLISH_FAILURES.labels(
                    "lease_lost" if isinstance(exc, LeaseLost) else "conflict").inc()
                log.warning("publish_refused", extra={"tenant_id": tenant_id, "error_code": exc.error_code,
                                                       **{k: str(v) for k, v in exc.context.items()}})
                resolved: list[EventId] = []
            else:
                resolved = [*work.committed, *(i for ids in work.failed.values() for i in ids)]
                claim.let_go(resolved)
                batch.open_intents -= len(files)
        if not resolved:
            await self._abandon(batch, files, [*work.committed, *(i for ids in work.failed.values() for i in ids)])
            return
        self.batches_published += 1
        self._observe(tenant_id, work, snapshot.snapshot_id, snapshot.max_visibility_token)

    async def _abandon(self, batch: _Batch, files: Sequence[NewDataFile], event_ids: Sequence[EventId]) -> None:
        """A commit that did not happen: our files are never referenced (delete them, best effort,
        and drop their intents) and the events we still hold go back without using an attempt."""
        for data_file in files:
            with contextlib.suppress(StorageError):
                await asyncio.to_thread(self._store.delete, data_file.path)
        async with batch.lock:
            await intents.release(self._pool, [f.path for f in files])
            batch.open_intents -= len(files)
        held = [e for e in event_ids if e in batch.claim.held]
        if held:
            await self._bus.release(batch.claim, held)

    def _observe(self, tenant_id: TenantId, work: TenantWork, snapshot_id: int, watermark: int) -> None:
        metrics.SNAPSHOTS_PUBLISHED.labels(str(tenant_id), "ingest").inc()
        metrics.LATEST_VISIBILITY_TOKEN.labels(str(tenant_id)).set(watermark)
        if work.failed:
            metrics.EVENTS_FAILED.labels(str(tenant_id)).inc(work.failed_count)
        if work.oldest_ingest is not None and work.committed:
            lag = (datetime.now(UTC) - work.oldest_ingest).total_seconds()
            metrics.WRITE_TO_VISIBLE.labels(str(tenant_id)).observe(max(lag, 0.0))
        log.info("snapshot_published", extra={
            "tenant_id": tenant_id, "snapshot_id": snapshot_id, "files": len(work.files),
            "events": len(work.committed), "failed": work.failed_count, "max_visibility_token": watermark,
        })


def _build_isolating_poison(
    group: list[ClaimedEvent], schema: TableSchema
) -> tuple[tuple[list[ClaimedEvent], ParquetFile] | None, list[tuple[ClaimedEvent, str]]]:
    """Build one file for the group; if that fails, find the events that cannot be built
    (one by one, only on this rare path) and build the rest."""
    try:
        return (group, write_parquet(build_table(group, schema))), []
    except Exception:
        log.warning("materialize_group_failed", exc_info=True)
    good: list[ClaimedEvent] = []
    bad: list[tuple[ClaimedEvent, str]] = []
    for event in group:
        try:
            build_table([event], schema)
            good.append(event)
        except Exception as exc:
            bad.append((event, f"cannot materialize: {type(exc).__name__}: {exc}"[:500]))
    if not good:
        return None, bad
    return (good, write_parquet(build_table(good, schema))), bad


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)

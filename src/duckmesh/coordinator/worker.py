"""The coordinator loop: claim -> materialize -> publish one snapshot per tenant -> ack.

Safety of retries and crashes:
- Files are written before the publishing transaction; if the process dies or the lease is
  lost before commit, they are orphans that no snapshot names (GC removes them later).
- The publishing transaction re-checks the lease inside ``bus.ack``; a coordinator whose lease
  expired cannot publish events another coordinator has taken over.
- Each event is committed exactly once (state moves claimed -> committed under the lease),
  so a row can never be published twice.
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

from duckmesh.bus.base import Claim, ClaimedEvent, FailedEvent, IngestBus
from duckmesh.catalog import snapshots, tables
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.snapshots import NewDataFile, PublishPlan
from duckmesh.coordinator.materialize import ParquetFile, build_table, write_parquet
from duckmesh.domain import EventId, SnapshotKind, TableId, TenantId
from duckmesh.errors import LeaseLost, StorageError
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
class TenantWork:
    """What one tenant's part of a claim produced, ready to publish."""

    files: list[NewDataFile] = field(default_factory=list)
    committed: list[EventId] = field(default_factory=list)
    failed: list[FailedEvent] = field(default_factory=list)
    released: list[EventId] = field(default_factory=list)
    oldest_ingest: datetime | None = None


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
                await self._requeue_expired()
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

    async def _requeue_expired(self) -> None:
        try:
            failed = await self._bus.requeue_expired(self.config.max_attempts)
        except Exception:
            log.exception("requeue_expired_failed")
            return
        by_tenant: dict[TenantId, TenantWork] = defaultdict(TenantWork)
        for event in failed:
            by_tenant[event.tenant_id].failed.append(event)
        for tenant_id, work in by_tenant.items():
            await self._publish(tenant_id, None, work)

    async def run_once(self) -> tuple[bool, bool]:
        """Claim and process one batch. Returns (claimed anything, the batch was full)."""
        claim = await self._bus.claim(
            self.config.owner, self.config.max_batch_events, self.config.max_batch_bytes, self.config.lease_seconds
        )
        if claim is None:
            return False, False
        token = trace_id_var.set(new_trace_id())
        started = time.perf_counter()
        metrics.CLAIM_BATCH_SIZE.observe(len(claim.events))
        extender = asyncio.create_task(self._keep_lease(claim))
        try:
            await self._process(claim)
        finally:
            extender.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                await extender
            trace_id_var.reset(token)
        metrics.COMMIT_BATCH_LATENCY.observe(time.perf_counter() - started)
        return True, len(claim.events) >= self.config.max_batch_events

    async def _keep_lease(self, claim: Claim) -> None:
        while True:
            await asyncio.sleep(self.config.lease_seconds / 3)
            await self._bus.extend(claim, self.config.lease_seconds)

    async def _process(self, claim: Claim) -> None:
        by_tenant: dict[TenantId, list[ClaimedEvent]] = defaultdict(list)
        for event in claim.events:
            by_tenant[event.tenant_id].append(event)
        await self._load_schemas(claim.events)
        for tenant_id, events in by_tenant.items():
            work = await self._materialize_tenant(claim, tenant_id, events)
            if work.released:
                await self._bus.release(claim, work.released)
            if work.committed or work.failed:
                await self._publish(tenant_id, claim, work)

    async def _load_schemas(self, events: Sequence[ClaimedEvent]) -> None:
        missing = sorted({e.table_id for e in events if (e.table_id, e.schema_version) not in self._schemas})
        if missing:
            async with self._pool.connection() as conn:
                self._schemas.update(await tables.schemas_by_version(conn, missing))

    async def _materialize_tenant(self, claim: Claim, tenant_id: TenantId, events: list[ClaimedEvent]) -> TenantWork:
        work = TenantWork(oldest_ingest=min(e.ingested_at for e in events))
        groups: dict[tuple[TableId, int, str], list[ClaimedEvent]] = defaultdict(list)
        for event in events:
            groups[(event.table_id, event.schema_version, event.event_time.date().isoformat())].append(event)
        for seq, ((table_id, version, day), group) in enumerate(sorted(groups.items())):
            schema = self._schemas.get((table_id, version))
            if schema is None:
                work.failed += await self._bus.nack(
                    claim, [e.event_id for e in group], "table or schema version no longer exists", 1
                )
                continue
            good, bad = await asyncio.to_thread(_build_isolating_poison, group, schema)
            if bad:
                metrics.CLAIM_RETRIES.inc(len(bad))
                bad_ids = [e.event_id for e, _ in bad]
                work.failed += await self._bus.nack(claim, bad_ids, bad[0][1], self.config.max_attempts)
            if not good:
                continue
            events_ok, parquet = good
            path = f"{tenant_id}/{table_id}/date={day}/part-{claim.claim_id}-{seq:04d}.parquet"
            try:
                await asyncio.to_thread(self._store.put, path, parquet.data)
            except StorageError:
                log.warning("object_store_unavailable", extra={"path": path, "tenant_id": tenant_id}, exc_info=True)
                metrics.SNAPSHOT_PUBLISH_FAILURES.labels("storage").inc()
                # Give the whole tenant back: no partial snapshot; files already written are orphans.
                work.released = [e.event_id for e in events]
                work.committed.clear()
                work.files.clear()
                return work
            work.files.append(_data_file(table_id, version, path, parquet))
            work.committed += [e.event_id for e in events_ok]
        return work

    async def _publish(self, tenant_id: TenantId, claim: Claim | None, work: TenantWork) -> None:
        plan = PublishPlan(tenant_id, SnapshotKind.INGEST, self.config.owner, add=work.files,
                           trace_id=trace_id_var.get())
        try:
            async with self._pool.transaction() as tx:
                head = await snapshots.lock_head(tx, tenant_id)
                snapshot_id = await snapshots.reserve_snapshot_id(tx)
                if claim is not None and work.committed:
                    await self._bus.ack(tx, claim, work.committed, snapshot_id)
                marks = await self._bus.resolved_watermarks(tx, tenant_id)
                snapshot = await snapshots.publish(tx, head, snapshot_id, plan, marks.tenant, marks.tables)
        except LeaseLost:
            metrics.SNAPSHOT_PUBLISH_FAILURES.labels("lease_lost").inc()
            log.warning("publish_lease_lost", extra={"tenant_id": tenant_id})
            return
        self.batches_published += 1
        metrics.SNAPSHOTS_PUBLISHED.labels(str(tenant_id), "ingest").inc()
        metrics.LATEST_VISIBILITY_TOKEN.labels(str(tenant_id)).set(snapshot.max_visibility_token)
        if work.failed:
            metrics.EVENTS_FAILED.labels(str(tenant_id)).inc(len(work.failed))
        if work.oldest_ingest is not None and work.committed:
            lag = (datetime.now(UTC) - work.oldest_ingest).total_seconds()
            metrics.WRITE_TO_VISIBLE.labels(str(tenant_id)).observe(max(lag, 0.0))
        log.info("snapshot_published", extra={
            "tenant_id": tenant_id, "snapshot_id": snapshot.snapshot_id, "files": len(work.files),
            "events": len(work.committed), "failed": len(work.failed),
            "max_visibility_token": snapshot.max_visibility_token,
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


def _data_file(table_id: TableId, version: int, path: str, parquet: ParquetFile) -> NewDataFile:
    return NewDataFile(
        table_id=table_id, path=path, record_count=parquet.record_count, file_size_bytes=len(parquet.data),
        content_hash=parquet.content_hash, min_token=parquet.min_token, max_token=parquet.max_token,
        min_event_time=parquet.min_event_time, max_event_time=parquet.max_event_time, schema_version=version,
    )


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)

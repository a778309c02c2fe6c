"""Retention and garbage collection with safety windows.

Order of a run (each step idempotent, so a rerun finishes an interrupted run):
1. table data retention: live files entirely older than ``retention_days`` leave the live set
   in a new snapshot (the watermark does not change);
2. snapshot expiry: keep the newest N, everything younger than the minimum age, pinned ones and
   those a running query holds a lease on; never the head;
3. file deletion: a file no retained snapshot references, that left the live set more than the
   safety age ago — the object first, then its catalog rows (a crash in between leaves a row
   whose object is gone; the next run deletes it again, which is not an error);
4. orphans: objects under the tenant's prefix no catalog row names whose writer can no longer
   publish them — their write intent expired (it is deleted first, under the lock a commit in
   flight holds) or they never had one and are older than the safety age by the database clock;
5. ingest-bus cleanup: committed events and replayed dead letters older than the idempotency
   window, dead letters nobody replayed older than the dead-letter retention, finished claims,
   resolved reservations.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from duckmesh.bus.operations import clean_bus
from duckmesh.catalog import intents, maintenance
from duckmesh.catalog.commit import CommitPlan, NoOlderVersionsOutside, Step, WatermarkPolicy, commit
from duckmesh.catalog.db import CatalogPool
from duckmesh.domain import SnapshotId, SnapshotKind, TenantId
from duckmesh.errors import CommitConflict, StorageError
from duckmesh.observability import metrics
from duckmesh.storage.base import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionPolicy:
    keep_snapshots: int = 50
    snapshot_min_age: timedelta = timedelta(hours=1)
    gc_safety_age: timedelta = timedelta(minutes=10)
    idempotency_window: timedelta = timedelta(days=7)
    dead_letter_retention: timedelta = timedelta(days=30)


class RetentionRunner:
    def __init__(self, pool: CatalogPool, store: ObjectStore, policy: RetentionPolicy, owner: str) -> None:
        self._pool = pool
        self._store = store
        self.policy = policy
        self.owner = owner

    async def run(self, tenant_id: TenantId, dry_run: bool = False) -> dict[str, Any]:
        run_owner = f"{self.owner}:{uuid.uuid4().hex[:8]}"
        async with self._pool.connection() as conn:
            # One retention run per tenant at a time (table id 0 = the whole tenant).
            if not await maintenance.acquire_job(conn, tenant_id, 0, "retention", run_owner, 3600):
                return {"status": "skipped", "reason": "another retention run holds this tenant"}
            run_id = await maintenance.start_run(conn, "retention", tenant_id, self.owner, dry_run=dry_run)
        summary: dict[str, Any] = {"dry_run": dry_run, "failures": []}
        try:
            summary["files_expired_by_table_retention"] = await self._table_retention(tenant_id, dry_run)
            expiring = await self._expire(tenant_id, dry_run)
            summary["snapshots_expired"] = len(expiring)
            deleted, freed = await self._delete_files(tenant_id, dry_run, summary["failures"], expiring)
            summary.update(files_deleted=deleted, bytes_freed=freed)
            summary["orphans_deleted"] = await self._orphans(tenant_id, dry_run, summary["failures"])
            cleaned = await clean_bus(self._pool, tenant_id, self.policy.idempotency_window,
                                      self.policy.dead_letter_retention, dry_run=dry_run)
            summary["events_deleted"] = cleaned.committed_events
            summary["bus_cleanup"] = asdict(cleaned)
            status = "completed" if not summary["failures"] else "completed_with_failures"
        except Exception as exc:
            status = "failed"
            summary["error"] = str(exc)[:300]
            raise
        finally:
            async with self._pool.connection() as conn:
                await maintenance.finish_run(conn, "retention", run_id, status, summary)
                await maintenance.release_job(conn, tenant_id, 0, "retention", run_owner)
            metrics.GC_RUNS.labels(status).inc()
            log.info("retention_finished", extra={"tenant_id": tenant_id, "status": status, "run_id": run_id,
                                                  **{k: v for k, v in summary.items() if k != "failures"},
                                                  "failures": len(summary["failures"])})
        return {"status": status, "run_id": run_id, **summary}

    async def _table_retention(self, tenant_id: TenantId, dry_run: bool) -> int:
        async with self._pool.connection() as conn:
            expired = await maintenance.expired_by_table_retention(conn, tenant_id)
        if dry_run or not expired:
            return len(expired)
        # Keyed tables: the removed files' delete markers go with them, so nothing older may hide
        # behind them (the same rule as compaction dropping tombstones).
        requires: list[Step] = []
        for table_id in sorted({e.table_id for e in expired if e.keyed}):
            mine = [e for e in expired if e.table_id == table_id]
            requires.append(NoOlderVersionsOutside(table_id, [e.file_id for e in mine], max(e.max_token for e in mine)))
        plan = CommitPlan(tenant_id, SnapshotKind.COMPACTION, f"{self.owner}:retention",
                          remove=[e.file_id for e in expired], requires=requires, watermark=WatermarkPolicy.KEEP)
        try:
            await commit(self._pool, plan)
        except CommitConflict:
            return 0  # the table changed first (a compaction, a late publication); the next run retries
        return len(expired)

    async def _expire(self, tenant_id: TenantId, dry_run: bool) -> list[SnapshotId]:
        """The snapshots expired by this run (a dry run: those it would expire)."""
        async with self._pool.connection() as conn:
            candidates = await maintenance.expirable_snapshots(
                conn, tenant_id, self.policy.keep_snapshots, self.policy.snapshot_min_age
            )
            if dry_run or not candidates:
                return candidates
            return await maintenance.expire_snapshots(conn, tenant_id, candidates)

    async def _delete_files(
        self, tenant_id: TenantId, dry_run: bool, failures: list[str], expiring: list[SnapshotId]
    ) -> tuple[int, int]:
        async with self._pool.connection() as conn:
            # A dry run counts as if its expiry had happened, so it reports what a real run deletes.
            doomed = await maintenance.deletable_files(
                conn, tenant_id, self.policy.gc_safety_age, assume_expired=expiring if dry_run else []
            )
        if dry_run:
            return len(doomed), sum(f.file_size_bytes for f in doomed)
        gone = []
        for data_file in doomed:
            try:
                await asyncio.to_thread(self._store.delete, data_file.path)
                gone.append(data_file)
            except StorageError as exc:
                failures.append(f"{data_file.path}: {exc.error_code}")
        if gone:
            async with self._pool.connection() as conn:
                await maintenance.forget_files(conn, [f.file_id for f in gone])
            metrics.GC_FILES_DELETED.labels("unreferenced").inc(len(gone))
        return len(gone), sum(f.file_size_bytes for f in gone)

    async def _orphans(self, tenant_id: TenantId, dry_run: bool, failures: list[str]) -> int:
        listed = await asyncio.to_thread(lambda: list(self._store.list(f"{tenant_id}/")))
        async with self._pool.connection() as conn:
            known = await maintenance.known_paths(conn, tenant_id)
            unknown = [o for o in listed if o.key not in known]
            view = await intents.expire_for_gc(conn, tenant_id, [o.key for o in unknown], dry_run=dry_run)
            cutoff = await maintenance.database_now(conn) - self.policy.gc_safety_age
            candidates = sorted(
                {o.key for o in unknown if o.key in view.expired
                 or (o.key not in view.live and o.modified_at < cutoff)}
                # Expired intents whose object was never listed (the put never happened, or the
                # listing raced it): delete the key too, deleting a missing object is no error.
                | {p for p in view.expired if p.startswith(f"{tenant_id}/")}
            )
            # Re-check right before deleting: a commit that took its intent before we expired it
            # has published the path by now.
            published = await maintenance.known_among(conn, candidates)
        candidates = [p for p in candidates if p not in published]
        listed_keys = {o.key for o in unknown}
        if dry_run:
            return sum(1 for p in candidates if p in listed_keys)
        removed = 0
        for key in candidates:
            try:
                await asyncio.to_thread(self._store.delete, key)
                removed += key in listed_keys
            except StorageError as exc:
                failures.append(f"{key}: {exc.error_code}")
        metrics.GC_FILES_DELETED.labels("orphan").inc(removed)
        return removed

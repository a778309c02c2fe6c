"""Retention and garbage collection with safety windows.

Order of a run (each step idempotent, so a rerun finishes an interrupted run):
1. table data retention: live files entirely older than ``retention_days`` leave the live set
   in a new snapshot (the watermark does not change);
2. snapshot expiry: keep the newest N, everything younger than the minimum age, pinned ones and
   those a running query holds a lease on; never the head;
3. file deletion: a file no retained snapshot references, that left the live set more than the
   safety age ago — the object first, then its catalog rows (a crash in between leaves a row
   whose object is gone; the next run deletes it again, which is not an error);
4. orphans: objects under the tenant's prefix no catalog row names, older than the safety age
   (files of crashed coordinators or compactors);
5. ingest-bus cleanup: committed events older than the idempotency window.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from duckmesh.catalog import maintenance, snapshots
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.snapshots import PublishPlan
from duckmesh.domain import SnapshotId, SnapshotKind, TenantId
from duckmesh.errors import StorageError
from duckmesh.observability import metrics
from duckmesh.storage.base import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionPolicy:
    keep_snapshots: int = 50
    snapshot_min_age: timedelta = timedelta(hours=1)
    gc_safety_age: timedelta = timedelta(minutes=10)
    idempotency_window: timedelta = timedelta(days=7)


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
            summary["events_deleted"] = await self._bus_cleanup(tenant_id, dry_run)
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
        return {"status": status, "run_id": run_id, **summary}

    async def _table_retention(self, tenant_id: TenantId, dry_run: bool) -> int:
        async with self._pool.connection() as conn:
            expired = await maintenance.expired_by_table_retention(conn, tenant_id)
        if dry_run or not expired:
            return len(expired)
        plan = PublishPlan(tenant_id, SnapshotKind.COMPACTION, f"{self.owner}:retention",
                           remove=[file_id for _, file_id in expired])
        try:
            async with self._pool.transaction() as tx:
                await snapshots.publish_keeping_watermark(tx, plan)
        except snapshots.LiveSetChanged:
            return 0  # a compaction moved those files first; the next run sees the new ones
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
        cutoff = datetime.now(UTC) - self.policy.gc_safety_age
        orphans = [o for o in listed if o.key not in known and o.modified_at < cutoff]
        if dry_run:
            return len(orphans)
        removed = 0
        for orphan in orphans:
            # Re-check: a coordinator may have published this very file since we listed.
            async with self._pool.connection() as conn:
                if await maintenance.path_known(conn, orphan.key):
                    continue
            try:
                await asyncio.to_thread(self._store.delete, orphan.key)
                removed += 1
            except StorageError as exc:
                failures.append(f"{orphan.key}: {exc.error_code}")
        metrics.GC_FILES_DELETED.labels("orphan").inc(removed)
        return removed

    async def _bus_cleanup(self, tenant_id: TenantId, dry_run: bool) -> int:
        async with self._pool.connection() as conn:
            return await maintenance.delete_committed_events(
                conn, tenant_id, self.policy.idempotency_window, dry_run=dry_run
            )

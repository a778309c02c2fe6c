"""Snapshot restore: a NEW snapshot whose file sets equal an old one's (history is kept)."""

from __future__ import annotations

from duckmesh.catalog import snapshots, tables
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.snapshots import PublishPlan, Snapshot
from duckmesh.domain import SnapshotKind, TenantId


async def restore_snapshot(pool: CatalogPool, tenant_id: TenantId, snapshot_id: int, created_by: str) -> Snapshot:
    """Files live now but not in the target leave the live set; files of the target that are no
    longer live come back (the target is retained, so GC has not deleted them). The watermark
    does not go back: it stays the head's, and later ingest continues from it."""
    async with pool.transaction() as tx:
        head = await snapshots.lock_head(tx, tenant_id)
        target = await snapshots.get_snapshot(tx, tenant_id, snapshot_id)
        # Only tables that exist now come back; a table dropped since stays dropped.
        live_tables = {t.table_id for t in await tables.list_tables(tx, tenant_id)}
        wanted = {
            f.file_id for f in await snapshots.live_files(tx, tenant_id, target.snapshot_id)
            if f.table_id in live_tables
        }
        current = (
            {f.file_id for f in await snapshots.live_files(tx, tenant_id, head.snapshot_id)}
            if head.snapshot_id is not None else set()
        )
        new_id = await snapshots.reserve_snapshot_id(tx)
        marks = await snapshots.table_watermarks(tx, head.snapshot_id)
        plan = PublishPlan(
            tenant_id, SnapshotKind.RESTORE, created_by,
            remove=sorted(current - wanted), readd=sorted(wanted - current),
        )
        return await snapshots.publish(tx, head, new_id, plan, head.max_visibility_token, marks)

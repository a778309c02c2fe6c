"""Snapshot restore: a NEW snapshot whose file sets equal an old one's (history is kept)."""

from __future__ import annotations

from duckmesh.catalog.audit import AuditEntry
from duckmesh.catalog.commit import CommitPlan, SnapshotRetained, WatermarkPolicy, commit
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.snapshots import Snapshot
from duckmesh.domain import SnapshotId, SnapshotKind, TenantId


async def restore_snapshot(
    pool: CatalogPool, tenant_id: TenantId, snapshot_id: int, created_by: str, audit: AuditEntry | None = None
) -> Snapshot:
    """Files live now but not in the target leave the live set; files of the target that are no
    longer live come back. The target is locked and must still be retained when the commit runs
    (an expiry racing the restore either finishes first — 404 — or waits for it), so GC can never
    have deleted a file the restore brings back. The watermark does not go back."""
    target = SnapshotId(snapshot_id)
    plan = CommitPlan(
        tenant_id, SnapshotKind.RESTORE, created_by, restore_to=target, requires=[SnapshotRetained(target)],
        effects=[audit] if audit is not None else [], watermark=WatermarkPolicy.KEEP,
    )
    return await commit(pool, plan)

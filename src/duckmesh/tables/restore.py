"""Snapshot restore: a NEW snapshot whose file sets equal an old one's (history is kept)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from duckmesh.catalog import snapshots, tables
from duckmesh.catalog.audit import AuditEntry
from duckmesh.catalog.commit import CommitPlan, SnapshotRetained, WatermarkPolicy, commit
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.snapshots import DataFile, Snapshot
from duckmesh.catalog.tables import TableDef
from duckmesh.domain import SnapshotId, SnapshotKind, TableId, TenantId


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


@dataclass(frozen=True)
class TableChange:
    """What a restore would do to one live table."""

    table: TableDef
    files_now: frozenset[int]
    files_after: frozenset[int]
    stored_rows_now: int  # every stored row: a keyed table's older versions and delete markers too
    stored_rows_after: int
    existed_at_target: bool  # False: the table was created after the target, it would become empty

    @property
    def changed(self) -> bool:
        return self.files_now != self.files_after


async def restore_preview(pool: CatalogPool, tenant_id: TenantId, snapshot_id: int) -> list[TableChange]:
    """A dry run of ``restore_snapshot``: per live table, its files and stored rows now and after
    (the same rule: every live table gets its file set of the target; nothing is written)."""
    async with pool.connection() as conn:
        await snapshots.get_snapshot(conn, tenant_id, snapshot_id)  # 404 when gone
        head = await snapshots.head(conn, tenant_id)
        live = await tables.list_tables(conn, tenant_id)
        now = await snapshots.live_files(conn, tenant_id, head.snapshot_id) if head.snapshot_id else []
        target = await snapshots.live_files(conn, tenant_id, snapshot_id)
        at_target = {p.table.table_id for p in await tables.tables_of_snapshot(conn, tenant_id, snapshot_id)}

    now_by, target_by = _by_table(now), _by_table(target)
    return [TableChange(t, frozenset(f.file_id for f in now_by[t.table_id]),
                        frozenset(f.file_id for f in target_by[t.table_id]),
                        sum(f.record_count for f in now_by[t.table_id]),
                        sum(f.record_count for f in target_by[t.table_id]),
                        t.table_id in at_target) for t in live]


def _by_table(files: list[DataFile]) -> defaultdict[TableId, list[DataFile]]:
    grouped: defaultdict[TableId, list[DataFile]] = defaultdict(list)
    for file in files:
        grouped[file.table_id].append(file)
    return grouped

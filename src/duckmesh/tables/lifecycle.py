"""Table lifecycle: create, schema evolution (ALTER) and DROP, each published as a snapshot through
the commit protocol, with its audit row in the same transaction.

A snapshot pins every live table's schema version, so creating or altering a table publishes a
``schema`` snapshot (watermark kept): the same snapshot id then answers with the same columns
at the head and by id, forever.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from duckmesh.bus.base import IngestBus
from duckmesh.catalog import tables, tokens
from duckmesh.catalog.audit import AuditEntry
from duckmesh.catalog.commit import CommitPlan, Step, WatermarkPolicy, commit
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.snapshots import Snapshot
from duckmesh.catalog.tables import TableDef
from duckmesh.domain import SnapshotKind, TenantId
from duckmesh.schema import CompatibilityMode, TableSchema

TABLE_DROPPED = "table_dropped"


def _audited(audit: AuditEntry | None) -> list[Step]:
    return [audit] if audit is not None else []


async def create_table(
    pool: CatalogPool, tenant_id: TenantId, name: str, schema: TableSchema, mode: CompatibilityMode,
    created_by: str, audit: AuditEntry | None = None,
) -> TableDef:
    step = tables.CreateTable(name, schema, mode)
    await commit(pool, CommitPlan(tenant_id, SnapshotKind.SCHEMA, created_by, requires=[step],
                                  effects=_audited(audit), watermark=WatermarkPolicy.KEEP))
    async with pool.connection() as conn:
        return await tables.get_table(conn, tenant_id, name, with_stats=True)


async def alter_table(
    pool: CatalogPool, tenant_id: TenantId, name: str, columns: Sequence[Mapping[str, Any]],
    mode: CompatibilityMode | None, created_by: str, audit: AuditEntry | None = None,
) -> TableDef:
    """The next schema version if it is compatible with the current one (409 otherwise)."""
    step = tables.AlterSchema(name, columns, mode)
    await commit(pool, CommitPlan(tenant_id, SnapshotKind.SCHEMA, created_by, requires=[step],
                                  effects=_audited(audit), watermark=WatermarkPolicy.KEEP))
    async with pool.connection() as conn:
        return await tables.get_table(conn, tenant_id, name, with_stats=True)


async def drop_table(
    pool: CatalogPool, bus: IngestBus, tenant_id: TenantId, name: str, created_by: str,
    audit: AuditEntry | None = None,
) -> tuple[TableDef, Snapshot]:
    """Drop a table in one commit: the row is marked dropped (accepting transactions finish first,
    later ones are refused), its unresolved events fail as ``table_dropped`` and its pending
    backfill reservations fail, every live file leaves the live set, the watermark advances over
    what was failed. Older snapshots still show the table while they are retained."""
    async with pool.connection() as conn:
        table = await tables.get_table(conn, tenant_id, name)
    plan = CommitPlan(
        tenant_id, SnapshotKind.DROP, created_by,
        drop_tables=[table.table_id],
        requires=[tables.DropTable(table.table_id)],
        effects=[bus.fail_table_step(tenant_id, table.table_id, TABLE_DROPPED),
                 tokens.FailTableReservations(table.table_id), *_audited(audit)],
    )
    return table, await commit(pool, plan)

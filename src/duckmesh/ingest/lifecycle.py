"""Table lifecycle on the write side: schema evolution (ALTER) and DROP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from duckmesh.bus.base import IngestBus
from duckmesh.catalog import snapshots, tables
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.snapshots import PublishPlan, Snapshot
from duckmesh.catalog.tables import TableDef
from duckmesh.domain import SnapshotKind, TenantId
from duckmesh.errors import SchemaIncompatible, ValidationFailed
from duckmesh.schema import CompatibilityMode, SchemaError, TableSchema, compatibility_problems

TABLE_DROPPED = "table_dropped"


async def alter_table(
    pool: CatalogPool, tenant_id: TenantId, name: str, columns: Sequence[dict[str, Any]],
    mode: CompatibilityMode | None,
) -> TableDef:
    """Create the next schema version if it is compatible with the current one under the
    table's (or the newly given) mode. The table row lock means two concurrent ALTERs cannot
    both create the same version; the second one is checked against the first's result."""
    async with pool.transaction() as tx:
        table = await tables.lock_table(tx, tenant_id, name)
        try:
            new = TableSchema.build(columns, table.schema.primary_key, table.schema.partition_by)
        except SchemaError as exc:
            raise ValidationFailed(str(exc), table=name) from None
        effective: CompatibilityMode = mode or table.compatibility_mode
        problems = compatibility_problems(table.schema, new, effective)
        if problems:
            raise SchemaIncompatible(
                f"the change is not allowed under compatibility mode {effective}",
                table=name, compatibility_mode=effective, reasons=problems,
            )
        await tables.add_schema_version(tx, table, new, effective)
    async with pool.connection() as conn:
        return await tables.get_table(conn, tenant_id, name, with_stats=True)


async def drop_table(pool: CatalogPool, bus: IngestBus, tenant_id: TenantId, name: str, created_by: str) -> Snapshot:
    """Drop a table: pending events fail as ``table_dropped`` and a ``drop`` snapshot removes its
    files from the live set, all in one transaction. Older snapshots still see the table while
    they are retained; its files are collected by retention like any unreferenced file."""
    async with pool.transaction() as tx:
        table = await tables.lock_table(tx, tenant_id, name)
        head = await snapshots.lock_head(tx, tenant_id)
        await tables.mark_dropped(tx, table.table_id)
        await bus.fail_table(tx, tenant_id, table.table_id, TABLE_DROPPED)
        live = await snapshots.current_files(tx, tenant_id, table.table_id)
        snapshot_id = await snapshots.reserve_snapshot_id(tx)
        marks = await bus.resolved_watermarks(tx, tenant_id)
        plan = PublishPlan(tenant_id, SnapshotKind.DROP, created_by, remove=[f.file_id for f in live])
        return await snapshots.publish(tx, head, snapshot_id, plan, marks.tenant, marks.tables)

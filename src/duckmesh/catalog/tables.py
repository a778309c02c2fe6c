"""Table definitions and their schema versions (the schema registry)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from duckmesh.catalog.db import AsyncConn
from duckmesh.domain import TableId, TenantId
from duckmesh.errors import TableExists, TableNotFound
from duckmesh.schema import CompatibilityMode, TableSchema


@dataclass(frozen=True)
class TableStats:
    rows: int = 0
    files: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class TableDef:
    table_id: TableId
    tenant_id: TenantId
    table_name: str
    schema_version: int
    schema: TableSchema
    compatibility_mode: CompatibilityMode
    created_at: datetime
    updated_at: datetime
    stats: TableStats = field(default_factory=TableStats)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TableDef:
        stats = TableStats(row.get("stat_rows") or 0, row.get("stat_files") or 0, row.get("stat_bytes") or 0)
        return cls(
            TableId(row["table_id"]), TenantId(row["tenant_id"]), row["table_name"], row["schema_version"],
            TableSchema.from_json(row["schema_json"]), row["compatibility_mode"],
            row["created_at"], row["updated_at"], stats,
        )

    def to_info(self) -> dict[str, Any]:
        return {
            "table_id": self.table_id,
            "tenant_id": self.tenant_id,
            "table_name": self.table_name,
            "schema_version": self.schema_version,
            "columns": [c.to_json() for c in self.schema.columns],
            "primary_key": list(self.schema.primary_key),
            "partition_by": list(self.schema.partition_by),
            "compatibility_mode": self.compatibility_mode,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "stats": {"rows": self.stats.rows, "files": self.stats.files, "bytes": self.stats.bytes},
        }


_SELECT = (
    "SELECT t.*, v.schema_json FROM table_def t"
    " JOIN table_schema_version v ON v.table_id = t.table_id AND v.schema_version = t.schema_version"
)
_SELECT_WITH_STATS = (
    "SELECT t.*, v.schema_json, s.stat_rows, s.stat_files, s.stat_bytes FROM table_def t"
    " JOIN table_schema_version v ON v.table_id = t.table_id AND v.schema_version = t.schema_version"
    " LEFT JOIN LATERAL ("
    "   SELECT sum(f.record_count)::bigint AS stat_rows, count(*)::bigint AS stat_files,"
    "          sum(f.file_size_bytes)::bigint AS stat_bytes"
    "   FROM file_live_range r JOIN data_file f USING (file_id)"
    "   WHERE r.tenant_id = t.tenant_id AND r.table_id = t.table_id AND r.removed_snapshot_id IS NULL"
    " ) s ON true"
)


async def create_table(
    conn: AsyncConn, tenant_id: TenantId, name: str, schema: TableSchema, mode: CompatibilityMode
) -> TableDef:
    try:
        async with conn.transaction():
            cur = await conn.execute(
                "INSERT INTO table_def (tenant_id, table_name, primary_key, partition_by, compatibility_mode)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING table_id",
                (tenant_id, name, list(schema.primary_key), list(schema.partition_by), mode),
            )
            row = await cur.fetchone()
            assert row is not None
            await conn.execute(
                "INSERT INTO table_schema_version (table_id, schema_version, schema_json, compatibility_mode)"
                " VALUES (%s, 1, %s, %s)",
                (row["table_id"], Jsonb(schema.to_json()), mode),
            )
    except psycopg.errors.UniqueViolation:
        raise TableExists(f"table {name!r} already exists", table=name) from None
    return await get_table(conn, tenant_id, name)


async def get_table(conn: AsyncConn, tenant_id: TenantId, name: str, *, with_stats: bool = False) -> TableDef:
    query = (_SELECT_WITH_STATS if with_stats else _SELECT) + (
        " WHERE t.tenant_id = %s AND t.table_name = %s AND t.dropped_at IS NULL"
    )
    cur = await conn.execute(query, (tenant_id, name))
    row = await cur.fetchone()
    if row is None:
        raise TableNotFound(f"table {name!r} does not exist", table=name)
    return TableDef.from_row(row)


async def list_tables(conn: AsyncConn, tenant_id: TenantId, *, with_stats: bool = False) -> list[TableDef]:
    query = (_SELECT_WITH_STATS if with_stats else _SELECT) + (
        " WHERE t.tenant_id = %s AND t.dropped_at IS NULL ORDER BY t.table_name"
    )
    cur = await conn.execute(query, (tenant_id,))
    return [TableDef.from_row(row) for row in await cur.fetchall()]


async def schemas_by_version(conn: AsyncConn, table_ids: list[TableId]) -> dict[tuple[TableId, int], TableSchema]:
    """Every schema version of the given tables, for materializing events of any version."""
    cur = await conn.execute(
        "SELECT table_id, schema_version, schema_json FROM table_schema_version WHERE table_id = ANY(%s)",
        (table_ids,),
    )
    return {
        (TableId(r["table_id"]), r["schema_version"]): TableSchema.from_json(r["schema_json"])
        for r in await cur.fetchall()
    }


async def lock_table(tx: AsyncConn, tenant_id: TenantId, name: str) -> TableDef:
    """The live table, its row locked until ``tx`` ends (serializes ALTER and DROP)."""
    # Lock the row alone first: a locking read joined to the schema table would drop the row
    # when a concurrent ALTER changed schema_version while we waited.
    cur = await tx.execute(
        "SELECT table_id FROM table_def WHERE tenant_id = %s AND table_name = %s AND dropped_at IS NULL FOR UPDATE",
        (tenant_id, name),
    )
    if await cur.fetchone() is None:
        raise TableNotFound(f"table {name!r} does not exist", table=name)
    return await get_table(tx, tenant_id, name)


async def add_schema_version(
    tx: AsyncConn, table: TableDef, schema: TableSchema, mode: CompatibilityMode
) -> int:
    version = table.schema_version + 1
    await tx.execute(
        "INSERT INTO table_schema_version (table_id, schema_version, schema_json, compatibility_mode)"
        " VALUES (%s, %s, %s, %s)",
        (table.table_id, version, Jsonb(schema.to_json()), mode),
    )
    await tx.execute(
        "UPDATE table_def SET schema_version = %s, compatibility_mode = %s, partition_by = %s, updated_at = now()"
        " WHERE table_id = %s",
        (version, mode, list(schema.partition_by), table.table_id),
    )
    return version


async def schema_history(conn: AsyncConn, table_id: TableId) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT schema_version, schema_json, compatibility_mode, created_at FROM table_schema_version"
        " WHERE table_id = %s ORDER BY schema_version",
        (table_id,),
    )
    return [
        {"schema_version": r["schema_version"], "compatibility_mode": r["compatibility_mode"],
         "created_at": r["created_at"].isoformat(), **r["schema_json"]}
        for r in await cur.fetchall()
    ]


async def mark_dropped(tx: AsyncConn, table_id: TableId) -> None:
    # clock_timestamp, taken after the caller holds the publication lock: every snapshot
    # published before the drop is older than dropped_at, every later one newer.
    await tx.execute(
        "UPDATE table_def SET dropped_at = clock_timestamp(), updated_at = now() WHERE table_id = %s", (table_id,)
    )


async def tables_at(conn: AsyncConn, tenant_id: TenantId, moment: datetime) -> list[TableDef]:
    """Tables as a snapshot created at ``moment`` saw them: existing then, with the schema
    version current then (a table dropped later, or recreated under the same name, included)."""
    cur = await conn.execute(
        "SELECT t.table_id, t.tenant_id, t.table_name, t.created_at, t.updated_at, v.schema_version,"
        " v.schema_json, v.compatibility_mode FROM table_def t"
        " JOIN LATERAL (SELECT * FROM table_schema_version v WHERE v.table_id = t.table_id"
        "   AND (v.created_at <= %(m)s OR v.schema_version = 1) ORDER BY v.schema_version DESC LIMIT 1) v ON true"
        " WHERE t.tenant_id = %(t)s AND t.created_at <= %(m)s AND (t.dropped_at IS NULL OR t.dropped_at > %(m)s)"
        " ORDER BY t.table_name",
        {"t": tenant_id, "m": moment},
    )
    return [TableDef.from_row(r) for r in await cur.fetchall()]


async def all_tables(conn: AsyncConn, tenant_id: TenantId) -> list[TableDef]:
    """Every table the tenant ever had (dropped ones too), each with its latest schema."""
    cur = await conn.execute(_SELECT + " WHERE t.tenant_id = %s ORDER BY t.table_id", (tenant_id,))
    return [TableDef.from_row(row) for row in await cur.fetchall()]

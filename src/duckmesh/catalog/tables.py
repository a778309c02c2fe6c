"""Table definitions and their schema versions (the schema registry)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from duckmesh.catalog.db import AsyncConn
from duckmesh.domain import TableId, TenantId, VisibilityToken
from duckmesh.errors import SchemaIncompatible, TableExists, TableNotFound, ValidationFailed
from duckmesh.schema import CompatibilityMode, SchemaError, TableSchema, compatibility_problems

if TYPE_CHECKING:
    from duckmesh.catalog.commit import CommitContext


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


@dataclass(frozen=True)
class PinnedTable:
    table: TableDef
    watermark: VisibilityToken


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


@dataclass
class CreateTable:
    """Commit step: insert the table and its first schema version (the snapshot then pins it)."""

    name: str
    schema: TableSchema
    mode: CompatibilityMode
    table_id: TableId | None = None  # set when applied

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        try:
            async with tx.transaction():  # a savepoint: the unique violation stays a clean error
                cur = await tx.execute(
                    "INSERT INTO table_def (tenant_id, table_name, primary_key, partition_by, compatibility_mode)"
                    " VALUES (%s, %s, %s, %s, %s) RETURNING table_id",
                    (ctx.tenant_id, self.name, list(self.schema.primary_key), list(self.schema.partition_by),
                     self.mode),
                )
        except psycopg.errors.UniqueViolation:
            raise TableExists(f"table {self.name!r} already exists", table=self.name) from None
        row = await cur.fetchone()
        assert row is not None
        self.table_id = TableId(row["table_id"])
        await tx.execute(
            "INSERT INTO table_schema_version (table_id, schema_version, schema_json, compatibility_mode)"
            " VALUES (%s, 1, %s, %s)",
            (self.table_id, Jsonb(self.schema.to_json()), self.mode),
        )


@dataclass
class AlterSchema:
    """Commit step: the next schema version from a whole new column list, if compatible with the
    current one under the table's (or the newly given) mode. The table row is locked, so two
    concurrent ALTERs cannot create the same version; the second is checked against the first."""

    name: str
    columns: Sequence[Mapping[str, Any]]
    mode: CompatibilityMode | None
    table_id: TableId | None = None  # set when applied

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        table = await lock_table(tx, ctx.tenant_id, self.name)
        cur = await tx.execute(
            "SELECT coalesce(max((c->>'field_id')::int), 0) AS last FROM table_schema_version v,"
            " jsonb_array_elements(v.schema_json->'columns') c WHERE v.table_id = %s",
            (table.table_id,),
        )
        last = await cur.fetchone()
        try:
            new = table.schema.evolve(self.columns, int(last["last"]) if last else 0)
        except SchemaError as exc:
            raise ValidationFailed(str(exc), table=self.name) from None
        effective: CompatibilityMode = self.mode or table.compatibility_mode
        problems = compatibility_problems(table.schema, new, effective)
        if problems:
            raise SchemaIncompatible(
                f"the change is not allowed under compatibility mode {effective}",
                table=self.name, compatibility_mode=effective, reasons=problems,
            )
        await add_schema_version(tx, table, new, effective)
        self.table_id = table.table_id


@dataclass(frozen=True)
class DropTable:
    """Commit step of a DROP: the live table row is locked for update (accepting transactions hold
    it key-shared, so they finish first and later ones see it dropped) and marked dropped."""

    table_id: TableId

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        # FOR UPDATE explicitly: a plain UPDATE of a non-key column takes a lock that does not
        # conflict with the accepting transactions' key-share locks.
        cur = await tx.execute(
            "SELECT 1 FROM table_def WHERE table_id = %s AND tenant_id = %s AND dropped_at IS NULL FOR UPDATE",
            (self.table_id, ctx.tenant_id),
        )
        if await cur.fetchone() is None:
            raise TableNotFound("the table does not exist (dropped meanwhile?)", table_id=self.table_id)
        await tx.execute(
            "UPDATE table_def SET dropped_at = clock_timestamp(), updated_at = now() WHERE table_id = %s",
            (self.table_id,),
        )


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


async def tables_of_snapshot(conn: AsyncConn, tenant_id: TenantId, snapshot_id: int) -> list[PinnedTable]:
    """The tables a snapshot names, each with the schema version the snapshot pinned and its
    table watermark: the same answer forever for the same snapshot id (dropped tables included)."""
    cur = await conn.execute(
        "SELECT t.table_id, t.tenant_id, t.table_name, t.created_at, t.updated_at, v.schema_version,"
        " v.schema_json, v.compatibility_mode, w.max_visibility_token AS watermark"
        " FROM snapshot_table_watermark w JOIN table_def t ON t.table_id = w.table_id"
        " JOIN table_schema_version v ON v.table_id = w.table_id AND v.schema_version = w.schema_version"
        " WHERE w.snapshot_id = %s AND t.tenant_id = %s ORDER BY t.table_name",
        (snapshot_id, tenant_id),
    )
    return [PinnedTable(TableDef.from_row(r), VisibilityToken(r["watermark"])) for r in await cur.fetchall()]


async def all_tables(conn: AsyncConn, tenant_id: TenantId) -> list[TableDef]:
    """Every table the tenant ever had (dropped ones too), each with its latest schema."""
    cur = await conn.execute(_SELECT + " WHERE t.tenant_id = %s ORDER BY t.table_id", (tenant_id,))
    return [TableDef.from_row(row) for row in await cur.fetchall()]

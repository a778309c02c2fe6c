"""Catalog side of backup and restore (ADR 0013): one consistent read of the whole catalog, the
logical export and import (COPY per table), row counts, sequences, the files retained snapshots
reference, and the relational checks a restored catalog must pass.

Synchronous psycopg: these run in the CLI, in worker threads, streaming COPY data to and from files.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from duckmesh.errors import BackupFailed, CatalogUnavailable

SyncConn = psycopg.Connection[dict[str, Any]]
_CHUNK = 1 << 20


@contextmanager
def connect(dsn: str, name: str = "duckmesh-backup") -> Iterator[SyncConn]:
    try:
        conn = psycopg.connect(dsn, row_factory=dict_row, connect_timeout=10, application_name=name,
                               autocommit=True)
    except psycopg.OperationalError as exc:
        raise CatalogUnavailable("catalog database is not reachable") from exc
    with conn:
        yield conn


@dataclass(frozen=True)
class ConsistentRead:
    """An open REPEATABLE READ, READ ONLY transaction: everything read through ``conn`` sees one
    instant of the catalog, and ``snapshot`` lets pg_dump see exactly the same one."""

    conn: SyncConn
    snapshot: str
    at: datetime


@contextmanager
def consistent_read(dsn: str) -> Iterator[ConsistentRead]:
    with connect(dsn) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            row = conn.execute("SELECT pg_export_snapshot() AS snapshot, now() AS at").fetchone()
            assert row is not None
            yield ConsistentRead(conn, row["snapshot"], row["at"])
        finally:
            conn.execute("ROLLBACK")


@dataclass(frozen=True)
class TableDef:
    name: str
    columns: tuple[str, ...]


def tables(conn: SyncConn) -> list[TableDef]:
    """Every base table of the catalog schema, parents before children (foreign keys), so an
    import in this order never meets a row whose parent is missing."""
    rows = conn.execute(
        "SELECT c.table_name, array_agg(c.column_name::text ORDER BY c.ordinal_position) AS columns"
        " FROM information_schema.columns c JOIN information_schema.tables t USING (table_schema, table_name)"
        " WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' GROUP BY c.table_name"
        " ORDER BY c.table_name"
    ).fetchall()
    parents: dict[str, set[str]] = {r["table_name"]: set() for r in rows}
    for edge in conn.execute(
        "SELECT child.relname AS child, parent.relname AS parent FROM pg_constraint k"
        " JOIN pg_class child ON child.oid = k.conrelid JOIN pg_class parent ON parent.oid = k.confrelid"
        " JOIN pg_namespace n ON n.oid = k.connamespace WHERE k.contype = 'f' AND n.nspname = 'public'"
    ).fetchall():
        if edge["child"] in parents and edge["child"] != edge["parent"]:
            parents[edge["child"]].add(edge["parent"])
    ordered: list[str] = []
    while len(ordered) < len(parents):
        ready = sorted(n for n, ps in parents.items() if n not in ordered and ps <= set(ordered))
        if not ready:
            raise BackupFailed("the catalog's foreign keys form a cycle", tables=sorted(set(parents) - set(ordered)))
        ordered += ready
    columns = {r["table_name"]: tuple(r["columns"]) for r in rows}
    return [TableDef(name, columns[name]) for name in ordered]


def row_counts(conn: SyncConn, names: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        row = conn.execute(sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(name))).fetchone()
        counts[name] = int(row["n"]) if row else 0
    return counts


def migrations(conn: SyncConn) -> list[int]:
    return [int(r["version"]) for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def sequences(conn: SyncConn) -> dict[str, int | None]:
    """Each sequence's last value (None: never used). Sequences are not transactional, so a value
    read after the snapshot may be higher than the rows show: restoring it can only skip ids."""
    return {r["sequencename"]: r["last_value"] for r in conn.execute(
        "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public' ORDER BY sequencename")}


def server_major(conn: SyncConn) -> int:
    row = conn.execute("SELECT current_setting('server_version_num')::int AS v").fetchone()
    assert row is not None
    return int(row["v"]) // 10000


def server_version(conn: SyncConn) -> str:
    row = conn.execute("SELECT current_setting('server_version') AS v").fetchone()
    return str(row["v"]) if row else "?"


def retained_objects(conn: SyncConn) -> list[dict[str, Any]]:
    """Every data file a retained (not expired) snapshot of any tenant references."""
    return list(conn.execute(
        "SELECT DISTINCT f.file_id, f.tenant_id, f.table_id, f.path, f.file_size_bytes, f.content_hash"
        " FROM data_file f JOIN file_live_range r USING (file_id)"
        " JOIN snapshot s ON s.tenant_id = r.tenant_id AND s.snapshot_id >= r.added_snapshot_id"
        "  AND (r.removed_snapshot_id IS NULL OR s.snapshot_id < r.removed_snapshot_id)"
        " WHERE s.expired_at IS NULL ORDER BY f.file_id"
    ))


def tenant_ids(conn: SyncConn) -> list[int]:
    return [int(r["tenant_id"]) for r in conn.execute("SELECT tenant_id FROM tenant ORDER BY tenant_id")]


def export_table(conn: SyncConn, table: TableDef, target: Path) -> None:
    """The table's rows in COPY text format, gzip-compressed."""
    query = sql.SQL("COPY {} ({}) TO STDOUT").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, table.columns)))
    with gzip.open(target, "wb", compresslevel=6) as out, conn.cursor().copy(query) as copy:
        for chunk in copy:
            out.write(chunk)


def import_table(conn: SyncConn, table: TableDef, source: Path) -> None:
    query = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, table.columns)))
    with gzip.open(source, "rb") as data, conn.cursor().copy(query) as copy:
        while chunk := data.read(_CHUNK):
            copy.write(chunk)


def set_sequences(conn: SyncConn, values: dict[str, int | None]) -> None:
    for name, value in values.items():
        if value is not None:
            conn.execute("SELECT setval(%s::regclass, %s, true)", (sql.Identifier(name).as_string(conn), value))


def is_empty(conn: SyncConn) -> bool:
    row = conn.execute(
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'public'"
    ).fetchone()
    return row is not None and row["n"] == 0


# Relations a restored catalog must satisfy beyond its foreign keys: each query counts violations.
CONSISTENCY_CHECKS: dict[str, str] = {
    "every tenant has its counter and head": (
        "SELECT count(*) AS n FROM tenant t WHERE NOT EXISTS (SELECT 1 FROM tenant_counter c"
        " WHERE c.tenant_id = t.tenant_id)"
        " OR NOT EXISTS (SELECT 1 FROM tenant_head h WHERE h.tenant_id = t.tenant_id)"),
    "each head is a retained snapshot of its tenant with the same watermark": (
        "SELECT count(*) AS n FROM tenant_head h WHERE h.head_snapshot_id IS NOT NULL AND NOT EXISTS ("
        " SELECT 1 FROM snapshot s WHERE s.snapshot_id = h.head_snapshot_id AND s.tenant_id = h.tenant_id"
        " AND s.expired_at IS NULL AND s.max_visibility_token = h.max_visibility_token)"),
    "no watermark above the last issued token": (
        "SELECT count(*) AS n FROM tenant_head h JOIN tenant_counter c USING (tenant_id)"
        " WHERE h.max_visibility_token > c.next_visibility_token - 1"),
    "every parent snapshot exists in the same tenant": (
        "SELECT count(*) AS n FROM snapshot s WHERE s.parent_snapshot_id IS NOT NULL AND NOT EXISTS ("
        " SELECT 1 FROM snapshot p WHERE p.snapshot_id = s.parent_snapshot_id AND p.tenant_id = s.tenant_id)"),
    "every snapshot change names a known data file": (
        "SELECT count(*) AS n FROM snapshot_file sf WHERE NOT EXISTS ("
        " SELECT 1 FROM data_file f WHERE f.file_id = sf.file_id)"),
    "every live range starts and ends at snapshots of the file's tenant": (
        "SELECT count(*) AS n FROM file_live_range r JOIN data_file f USING (file_id)"
        " WHERE r.tenant_id <> f.tenant_id OR NOT EXISTS (SELECT 1 FROM snapshot s"
        "  WHERE s.snapshot_id = r.added_snapshot_id AND s.tenant_id = r.tenant_id)"
        " OR (r.removed_snapshot_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM snapshot s"
        "  WHERE s.snapshot_id = r.removed_snapshot_id AND s.tenant_id = r.tenant_id))"),
    "every data file belongs to a table of its tenant": (
        "SELECT count(*) AS n FROM data_file f LEFT JOIN table_def t ON t.table_id = f.table_id"
        " WHERE t.table_id IS NULL OR t.tenant_id <> f.tenant_id"),
    "every table watermark names a table of the snapshot's tenant": (
        "SELECT count(*) AS n FROM snapshot_table_watermark w JOIN snapshot s USING (snapshot_id)"
        " LEFT JOIN table_def t ON t.table_id = w.table_id WHERE t.table_id IS NULL OR t.tenant_id <> s.tenant_id"),
    "each head pins every live table": (
        "SELECT count(*) AS n FROM table_def t JOIN tenant_head h USING (tenant_id)"
        " WHERE t.dropped_at IS NULL AND h.head_snapshot_id IS NOT NULL AND NOT EXISTS ("
        " SELECT 1 FROM snapshot_table_watermark w WHERE w.snapshot_id = h.head_snapshot_id"
        " AND w.table_id = t.table_id)"),
    "every table's schema version exists": (
        "SELECT count(*) AS n FROM table_def t WHERE NOT EXISTS (SELECT 1 FROM table_schema_version v"
        " WHERE v.table_id = t.table_id AND v.schema_version = t.schema_version)"),
    "every bus segment belongs to a table of its tenant": (
        "SELECT count(*) AS n FROM ingest_segment g LEFT JOIN table_def t ON t.table_id = g.table_id"
        " WHERE t.table_id IS NULL OR t.tenant_id <> g.tenant_id"),
    "every committed segment names a snapshot of its tenant": (
        "SELECT count(*) AS n FROM ingest_segment g WHERE g.state = 'committed' AND NOT EXISTS ("
        " SELECT 1 FROM snapshot s WHERE s.snapshot_id = g.snapshot_id AND s.tenant_id = g.tenant_id)"),
    "no issued token above the counter": (
        "SELECT count(*) AS n FROM ingest_segment g JOIN tenant_counter c USING (tenant_id)"
        " WHERE g.max_token >= c.next_visibility_token"),
}


def consistency(conn: SyncConn) -> dict[str, int]:
    """Violations per check (all zero for a sound catalog)."""
    found: dict[str, int] = {}
    for name, query in CONSISTENCY_CHECKS.items():
        row = conn.execute(query).fetchone()
        found[name] = int(row["n"]) if row else 0
    return found

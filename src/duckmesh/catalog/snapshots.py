"""Snapshots, data files and their live sets.

A publication is a plan plus one short transaction (see ``publish``): lock the tenant's head
row, apply the change set, record watermarks, move the head, NOTIFY. Callers compute
everything heavy (Parquet files, hashes) before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from duckmesh.catalog.db import AsyncConn
from duckmesh.catalog.notify import SNAPSHOT_CHANNEL
from duckmesh.domain import FileId, SnapshotId, SnapshotKind, TableId, TenantId, VisibilityToken
from duckmesh.errors import SnapshotNotFound, TenantNotFound


@dataclass(frozen=True)
class NewDataFile:
    table_id: TableId
    path: str
    record_count: int
    file_size_bytes: int
    content_hash: str
    min_token: int
    max_token: int
    min_event_time: datetime
    max_event_time: datetime
    schema_version: int
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataFile:
    file_id: FileId
    table_id: TableId
    path: str
    record_count: int
    file_size_bytes: int
    content_hash: str
    min_token: int | None
    max_token: int | None
    schema_version: int

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> DataFile:
        return cls(
            FileId(row["file_id"]), TableId(row["table_id"]), row["path"], row["record_count"],
            row["file_size_bytes"], row["content_hash"], row["min_token"], row["max_token"], row["schema_version"],
        )


@dataclass(frozen=True)
class Head:
    tenant_id: TenantId
    snapshot_id: SnapshotId | None
    max_visibility_token: VisibilityToken


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: SnapshotId
    tenant_id: TenantId
    parent_snapshot_id: SnapshotId | None
    kind: SnapshotKind
    created_at: datetime
    created_by: str
    max_visibility_token: VisibilityToken

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Snapshot:
        return cls(
            SnapshotId(row["snapshot_id"]), TenantId(row["tenant_id"]), row["parent_snapshot_id"],
            SnapshotKind(row["kind"]), row["created_at"], row["created_by"],
            VisibilityToken(row["max_visibility_token"]),
        )


@dataclass(frozen=True)
class PublishPlan:
    tenant_id: TenantId
    kind: SnapshotKind
    created_by: str
    add: Sequence[NewDataFile] = ()
    remove: Sequence[FileId] = ()
    trace_id: str | None = None
    readd: Sequence[FileId] = ()  # existing files that become live again (restore)


class LiveSetChanged(Exception):
    """A file the plan removes is no longer live (someone else changed the table first)."""


async def lock_head(tx: AsyncConn, tenant_id: TenantId) -> Head:
    """Take the tenant's publication lock (held until ``tx`` ends) and read the head."""
    cur = await tx.execute(
        "SELECT head_snapshot_id, max_visibility_token FROM tenant_head WHERE tenant_id = %s FOR UPDATE",
        (tenant_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise TenantNotFound("tenant does not exist", tenant_id=tenant_id)
    return Head(tenant_id, row["head_snapshot_id"], VisibilityToken(row["max_visibility_token"]))


async def reserve_snapshot_id(tx: AsyncConn) -> SnapshotId:
    cur = await tx.execute("SELECT nextval(pg_get_serial_sequence('snapshot', 'snapshot_id')) AS id")
    row = await cur.fetchone()
    assert row is not None
    return SnapshotId(row["id"])


async def publish(
    tx: AsyncConn,
    head: Head,
    snapshot_id: SnapshotId,
    plan: PublishPlan,
    tenant_watermark: VisibilityToken,
    table_watermarks: dict[TableId, VisibilityToken],
) -> Snapshot:
    """Write the snapshot inside ``tx`` (which must hold ``lock_head``). Watermarks never go
    back: each is the larger of the computed value and the previous snapshot's."""
    mark = VisibilityToken(max(tenant_watermark, head.max_visibility_token))
    cur = await tx.execute(
        "INSERT INTO snapshot (snapshot_id, tenant_id, parent_snapshot_id, kind, created_by,"
        " max_visibility_token, trace_id) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
        (snapshot_id, plan.tenant_id, head.snapshot_id, plan.kind.value, plan.created_by, mark, plan.trace_id),
    )
    row = await cur.fetchone()
    assert row is not None
    if plan.remove:
        cur = await tx.execute(
            "WITH gone AS (UPDATE file_live_range SET removed_snapshot_id = %(s)s"
            "  WHERE tenant_id = %(t)s AND file_id = ANY(%(ids)s) AND removed_snapshot_id IS NULL"
            "  RETURNING table_id, file_id)"
            " INSERT INTO snapshot_file (snapshot_id, table_id, file_id, change_type)"
            " SELECT %(s)s, table_id, file_id, 'remove' FROM gone",
            {"s": snapshot_id, "t": plan.tenant_id, "ids": list(plan.remove)},
        )
        if cur.rowcount != len(set(plan.remove)):
            raise LiveSetChanged("a file to remove is no longer live")
    if plan.add:
        await _add_files(tx, plan.tenant_id, snapshot_id, plan.add)
    if plan.readd:
        await tx.execute(
            "WITH f AS (SELECT file_id, table_id FROM data_file WHERE tenant_id = %(t)s AND file_id = ANY(%(ids)s)),"
            " c AS (INSERT INTO snapshot_file (snapshot_id, table_id, file_id, change_type)"
            "  SELECT %(s)s, table_id, file_id, 'add' FROM f)"
            " INSERT INTO file_live_range (tenant_id, table_id, file_id, added_snapshot_id)"
            " SELECT %(t)s, table_id, file_id, %(s)s FROM f",
            {"t": plan.tenant_id, "s": snapshot_id, "ids": list(plan.readd)},
        )
    if table_watermarks:
        await tx.execute(
            "INSERT INTO snapshot_table_watermark (snapshot_id, table_id, max_visibility_token)"
            " SELECT %(s)s, t.table_id, greatest(t.mark, coalesce(p.max_visibility_token, 0))"
            " FROM unnest(%(tables)s::bigint[], %(marks)s::bigint[]) AS t(table_id, mark)"
            " LEFT JOIN snapshot_table_watermark p ON p.snapshot_id = %(parent)s AND p.table_id = t.table_id",
            {"s": snapshot_id, "parent": head.snapshot_id,
             "tables": list(table_watermarks), "marks": list(table_watermarks.values())},
        )
    await tx.execute(
        "UPDATE tenant_head SET head_snapshot_id = %s, max_visibility_token = %s, updated_at = now()"
        " WHERE tenant_id = %s",
        (snapshot_id, mark, plan.tenant_id),
    )
    await tx.execute("SELECT pg_notify(%s, %s)", (SNAPSHOT_CHANNEL, f"{plan.tenant_id}:{snapshot_id}:{mark}"))
    return Snapshot.from_row(row)


async def publish_keeping_watermark(tx: AsyncConn, plan: PublishPlan) -> Snapshot:
    """Publish a change that makes no event visible (compaction, retention, restore): the
    tenant and table watermarks stay those of the parent. Raises LiveSetChanged when a file
    the plan removes is no longer live."""
    head = await lock_head(tx, plan.tenant_id)
    snapshot_id = await reserve_snapshot_id(tx)
    marks = await table_watermarks(tx, head.snapshot_id)
    return await publish(tx, head, snapshot_id, plan, head.max_visibility_token, marks)


async def _add_files(tx: AsyncConn, tenant_id: TenantId, snapshot_id: SnapshotId, files: Sequence[NewDataFile]) -> None:
    # One statement for the files, the change set and the live ranges.
    await tx.execute(
        "WITH f AS ("
        " INSERT INTO data_file (tenant_id, table_id, path, record_count, file_size_bytes, content_hash,"
        "  min_token, max_token, min_event_time, max_event_time, stats_json, schema_version)"
        " SELECT %(t)s, * FROM unnest(%(table)s::bigint[], %(path)s::text[], %(rows)s::bigint[],"
        "  %(size)s::bigint[], %(hash)s::text[], %(mint)s::bigint[], %(maxt)s::bigint[],"
        "  %(mine)s::timestamptz[], %(maxe)s::timestamptz[], %(stats)s::jsonb[], %(ver)s::int[])"
        " RETURNING file_id, table_id),"
        " c AS (INSERT INTO snapshot_file (snapshot_id, table_id, file_id, change_type)"
        "  SELECT %(s)s, table_id, file_id, 'add' FROM f)"
        " INSERT INTO file_live_range (tenant_id, table_id, file_id, added_snapshot_id)"
        " SELECT %(t)s, table_id, file_id, %(s)s FROM f",
        {
            "t": tenant_id, "s": snapshot_id,
            "table": [f.table_id for f in files], "path": [f.path for f in files],
            "rows": [f.record_count for f in files], "size": [f.file_size_bytes for f in files],
            "hash": [f.content_hash for f in files], "mint": [f.min_token for f in files],
            "maxt": [f.max_token for f in files], "mine": [f.min_event_time for f in files],
            "maxe": [f.max_event_time for f in files], "stats": [Jsonb(f.stats) for f in files],
            "ver": [f.schema_version for f in files],
        },
    )


async def head(conn: AsyncConn, tenant_id: TenantId) -> Head:
    cur = await conn.execute(
        "SELECT head_snapshot_id, max_visibility_token FROM tenant_head WHERE tenant_id = %s", (tenant_id,)
    )
    row = await cur.fetchone()
    if row is None:
        raise TenantNotFound("tenant does not exist", tenant_id=tenant_id)
    return Head(tenant_id, row["head_snapshot_id"], VisibilityToken(row["max_visibility_token"]))


async def head_with_time(conn: AsyncConn, tenant_id: TenantId) -> tuple[Head, datetime | None]:
    """The head and its creation time in one round trip."""
    cur = await conn.execute(
        "SELECT h.head_snapshot_id, h.max_visibility_token, s.created_at FROM tenant_head h"
        " LEFT JOIN snapshot s ON s.snapshot_id = h.head_snapshot_id WHERE h.tenant_id = %s",
        (tenant_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise TenantNotFound("tenant does not exist", tenant_id=tenant_id)
    return Head(tenant_id, row["head_snapshot_id"], VisibilityToken(row["max_visibility_token"])), row["created_at"]


async def get_snapshot(conn: AsyncConn, tenant_id: TenantId, snapshot_id: int, *, lock: bool = False) -> Snapshot:
    """A retained snapshot; ``lock`` (FOR SHARE) waits for an expiry in flight to finish."""
    cur = await conn.execute(
        "SELECT * FROM snapshot WHERE tenant_id = %s AND snapshot_id = %s AND expired_at IS NULL"
        + (" FOR SHARE" if lock else ""),
        (tenant_id, snapshot_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise SnapshotNotFound("snapshot not found", snapshot_id=snapshot_id)
    return Snapshot.from_row(row)


async def list_snapshots(
    conn: AsyncConn, tenant_id: TenantId, limit: int = 100, before: int | None = None
) -> list[Snapshot]:
    """Retained snapshots, newest first, optionally only those with an id below ``before``."""
    cur = await conn.execute(
        "SELECT * FROM snapshot WHERE tenant_id = %s AND expired_at IS NULL AND snapshot_id < %s"
        " ORDER BY snapshot_id DESC LIMIT %s",
        (tenant_id, before if before is not None else 2**62, limit),
    )
    return [Snapshot.from_row(r) for r in await cur.fetchall()]


async def table_summaries(
    conn: AsyncConn, tenant_id: TenantId, snapshot_ids: Sequence[int]
) -> dict[int, dict[TableId, dict[str, int]]]:
    """Per snapshot and table: live files, rows, bytes and the table watermark."""
    cur = await conn.execute(
        "SELECT s.snapshot_id, f.table_id, count(*) AS files, sum(f.record_count)::bigint AS rows,"
        " sum(f.file_size_bytes)::bigint AS bytes"
        " FROM unnest(%(ids)s::bigint[]) AS s(snapshot_id)"
        " JOIN file_live_range r ON r.tenant_id = %(t)s AND r.added_snapshot_id <= s.snapshot_id"
        "  AND (r.removed_snapshot_id IS NULL OR r.removed_snapshot_id > s.snapshot_id)"
        " JOIN data_file f USING (file_id) GROUP BY 1, 2",
        {"t": tenant_id, "ids": list(snapshot_ids)},
    )
    out: dict[int, dict[TableId, dict[str, int]]] = {sid: {} for sid in snapshot_ids}
    for row in await cur.fetchall():
        out[row["snapshot_id"]][TableId(row["table_id"])] = {
            "files": row["files"], "rows": row["rows"], "bytes": row["bytes"], "watermark": 0,
        }
    cur = await conn.execute(
        "SELECT snapshot_id, table_id, max_visibility_token FROM snapshot_table_watermark"
        " WHERE snapshot_id = ANY(%s)",
        (list(snapshot_ids),),
    )
    for row in await cur.fetchall():
        stats = out[row["snapshot_id"]].setdefault(
            TableId(row["table_id"]), {"files": 0, "rows": 0, "bytes": 0, "watermark": 0}
        )
        stats["watermark"] = row["max_visibility_token"]
    return out


async def pinned_ids(conn: AsyncConn, tenant_id: TenantId, snapshot_ids: Sequence[int]) -> set[int]:
    cur = await conn.execute(
        "SELECT snapshot_id FROM snapshot_pin WHERE tenant_id = %s AND snapshot_id = ANY(%s)"
        " AND (expires_at IS NULL OR expires_at > now())",
        (tenant_id, list(snapshot_ids)),
    )
    return {r["snapshot_id"] for r in await cur.fetchall()}


async def live_files(conn: AsyncConn, tenant_id: TenantId, snapshot_id: int) -> list[DataFile]:
    """The exact live file set of a snapshot, every table; the same answer forever."""
    cur = await conn.execute(
        "SELECT f.* FROM file_live_range r JOIN data_file f USING (file_id)"
        " WHERE r.tenant_id = %(t)s AND r.added_snapshot_id <= %(s)s"
        "   AND (r.removed_snapshot_id IS NULL OR r.removed_snapshot_id > %(s)s)"
        " ORDER BY f.table_id, f.min_token",
        {"t": tenant_id, "s": snapshot_id},
    )
    return [DataFile.from_row(r) for r in await cur.fetchall()]


async def snapshot_at(conn: AsyncConn, tenant_id: TenantId, moment: datetime) -> Snapshot:
    """The snapshot current at ``moment``: the newest created at or before it."""
    cur = await conn.execute(
        "SELECT * FROM snapshot WHERE tenant_id = %s AND created_at <= %s AND expired_at IS NULL"
        " ORDER BY snapshot_id DESC LIMIT 1",
        (tenant_id, moment),
    )
    row = await cur.fetchone()
    if row is None:
        raise SnapshotNotFound("no snapshot at or before that time", snapshot_time=moment.isoformat())
    return Snapshot.from_row(row)


async def issued_token(conn: AsyncConn, tenant_id: TenantId) -> int:
    cur = await conn.execute(
        "SELECT next_visibility_token - 1 AS issued FROM tenant_counter WHERE tenant_id = %s", (tenant_id,)
    )
    row = await cur.fetchone()
    if row is None:
        raise TenantNotFound("tenant does not exist", tenant_id=tenant_id)
    return int(row["issued"])


async def acquire_lease(conn: AsyncConn, tenant_id: TenantId, snapshot_id: int, owner: str, seconds: float) -> int:
    """Register that a query reads ``snapshot_id``; retention keeps it while the lease lives."""
    cur = await conn.execute(
        "INSERT INTO snapshot_lease (tenant_id, snapshot_id, owner, expires_at)"
        " VALUES (%s, %s, %s, now() + make_interval(secs => %s)) RETURNING lease_id",
        (tenant_id, snapshot_id, owner, seconds),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["lease_id"])


async def release_lease(conn: AsyncConn, lease_id: int) -> None:
    await conn.execute("DELETE FROM snapshot_lease WHERE lease_id = %s", (lease_id,))


async def table_watermarks(conn: AsyncConn, snapshot_id: int | None) -> dict[TableId, VisibilityToken]:
    if snapshot_id is None:
        return {}
    cur = await conn.execute(
        "SELECT table_id, max_visibility_token FROM snapshot_table_watermark WHERE snapshot_id = %s", (snapshot_id,)
    )
    return {TableId(r["table_id"]): VisibilityToken(r["max_visibility_token"]) for r in await cur.fetchall()}


async def current_files(conn: AsyncConn, tenant_id: TenantId, table_id: TableId) -> list[DataFile]:
    """The table's files in the tenant's head snapshot (the current live set)."""
    cur = await conn.execute(
        "SELECT f.* FROM file_live_range r JOIN data_file f USING (file_id)"
        " WHERE r.tenant_id = %s AND r.table_id = %s AND r.removed_snapshot_id IS NULL ORDER BY f.min_token",
        (tenant_id, table_id),
    )
    return [DataFile.from_row(r) for r in await cur.fetchall()]

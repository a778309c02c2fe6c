"""Snapshots, data files and their live sets: the read side. Publishing goes through
``catalog/commit.py`` (the commit protocol) only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from duckmesh.catalog.db import AsyncConn
from duckmesh.domain import FileId, SnapshotId, SnapshotKind, TableId, TenantId, VisibilityToken
from duckmesh.errors import SnapshotNotFound, TenantNotFound


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
    partition: dict[str, Any] = field(default_factory=dict, compare=False)  # partition column -> its one value

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> DataFile:
        return cls(
            FileId(row["file_id"]), TableId(row["table_id"]), row["path"], row["record_count"],
            row["file_size_bytes"], row["content_hash"], row["min_token"], row["max_token"], row["schema_version"],
            dict((row.get("stats_json") or {}).get("partition") or {}),
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


async def acquire_lease(
    conn: AsyncConn, tenant_id: TenantId, snapshot_id: int, owner: str, seconds: float
) -> tuple[int, Snapshot]:
    """Register that a query reads ``snapshot_id`` (retention keeps it while the lease lives) and
    return the lease id with the snapshot. One statement: the snapshot row is share-locked, so an
    expiry in flight (which locks it for update) either finishes first — then the snapshot is gone
    and this raises SnapshotNotFound — or waits for the lease and then keeps the snapshot."""
    cur = await conn.execute(
        "WITH s AS (SELECT * FROM snapshot WHERE tenant_id = %s AND snapshot_id = %s AND expired_at IS NULL"
        "   FOR SHARE),"
        " l AS (INSERT INTO snapshot_lease (tenant_id, snapshot_id, owner, expires_at)"
        "   SELECT tenant_id, snapshot_id, %s, clock_timestamp() + make_interval(secs => %s) FROM s"
        "   RETURNING lease_id)"
        " SELECT l.lease_id, s.* FROM s, l",
        (tenant_id, snapshot_id, owner, seconds),
    )
    row = await cur.fetchone()
    if row is None:
        raise SnapshotNotFound("snapshot not found", snapshot_id=snapshot_id)
    return int(row["lease_id"]), Snapshot.from_row(row)


async def lease_head(
    conn: AsyncConn, tenant_id: TenantId, owner: str, seconds: float
) -> tuple[int, Snapshot] | None:
    """``acquire_lease`` on the tenant's head in the same statement that reads it; None when the
    tenant has no snapshot yet. SnapshotNotFound when the head moved on and was expired between
    the two (the caller reads the new head)."""
    cur = await conn.execute(
        "WITH h AS (SELECT head_snapshot_id FROM tenant_head WHERE tenant_id = %(t)s),"
        " s AS (SELECT * FROM snapshot WHERE tenant_id = %(t)s AND snapshot_id = (SELECT head_snapshot_id FROM h)"
        "   AND expired_at IS NULL FOR SHARE),"
        " l AS (INSERT INTO snapshot_lease (tenant_id, snapshot_id, owner, expires_at)"
        "   SELECT tenant_id, snapshot_id, %(o)s, clock_timestamp() + make_interval(secs => %(secs)s) FROM s"
        "   RETURNING lease_id)"
        " SELECT h.head_snapshot_id AS head, l.lease_id, s.* FROM h LEFT JOIN s ON true LEFT JOIN l ON true",
        {"t": tenant_id, "o": owner, "secs": seconds},
    )
    row = await cur.fetchone()
    if row is None:
        raise TenantNotFound("tenant does not exist", tenant_id=tenant_id)
    if row["head"] is None:
        return None
    if row["lease_id"] is None:
        raise SnapshotNotFound("the head snapshot was expired while being leased", snapshot_id=row["head"])
    return int(row["lease_id"]), Snapshot.from_row(row)


async def release_leases(conn: AsyncConn, lease_ids: Sequence[int]) -> None:
    await conn.execute("DELETE FROM snapshot_lease WHERE lease_id = ANY(%s)", (list(lease_ids),))


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

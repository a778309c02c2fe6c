"""Catalog side of the maintenance plane: job leases, run audit rows, pins, snapshot expiry,
and the queries that decide which files garbage collection may delete."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from duckmesh.catalog.db import AsyncConn
from duckmesh.domain import FileId, SnapshotId, TableId, TenantId
from duckmesh.errors import LeaseLost, SnapshotNotFound

RUN_TABLES = {"compaction": "compaction_run", "retention": "gc_run", "integrity": "integrity_run"}


async def acquire_job(
    conn: AsyncConn, tenant_id: TenantId, table_id: int, job: str, owner: str, seconds: float
) -> bool:
    """Take the (tenant, table, job) lease unless someone else holds a live one."""
    cur = await conn.execute(
        "INSERT INTO job_lease (tenant_id, table_id, job, owner, lease_until)"
        " VALUES (%(t)s, %(tb)s, %(j)s, %(o)s, clock_timestamp() + make_interval(secs => %(s)s))"
        " ON CONFLICT (tenant_id, table_id, job) DO UPDATE"
        " SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until"
        " WHERE job_lease.lease_until < clock_timestamp() OR job_lease.owner = EXCLUDED.owner"
        " RETURNING owner",
        {"t": tenant_id, "tb": table_id, "j": job, "o": owner, "s": seconds},
    )
    return await cur.fetchone() is not None


async def extend_job(
    conn: AsyncConn, tenant_id: TenantId, table_id: int, job: str, owner: str, seconds: float
) -> None:
    """Keep a held job lease alive; LeaseLost once it expired (another runner may own it now)."""
    cur = await conn.execute(
        "UPDATE job_lease SET lease_until = clock_timestamp() + make_interval(secs => %s)"
        " WHERE tenant_id = %s AND table_id = %s AND job = %s AND owner = %s AND lease_until > clock_timestamp()",
        (seconds, tenant_id, table_id, job, owner),
    )
    if cur.rowcount != 1:
        raise LeaseLost("the maintenance job lease expired", job=job, owner=owner)


async def release_job(conn: AsyncConn, tenant_id: TenantId, table_id: int, job: str, owner: str) -> None:
    await conn.execute(
        "DELETE FROM job_lease WHERE tenant_id = %s AND table_id = %s AND job = %s AND owner = %s",
        (tenant_id, table_id, job, owner),
    )


async def job_leases(conn: AsyncConn, tenant_id: TenantId | None = None) -> list[dict[str, Any]]:
    """Maintenance job leases (compaction per table, retention per tenant) and whether each expired."""
    cur = await conn.execute(
        "SELECT owner, job, tenant_id, table_id, lease_until, lease_until < clock_timestamp() AS expired"
        " FROM job_lease WHERE %(t)s::bigint IS NULL OR tenant_id = %(t)s ORDER BY lease_until, owner",
        {"t": tenant_id},
    )
    return list(await cur.fetchall())


async def expire_job_leases(conn: AsyncConn, owner: str) -> int:
    """End ``owner``'s job leases now; a runner still alive loses its commit (its lease is re-checked
    in the publishing transaction) and another runner may take the job."""
    cur = await conn.execute(
        "UPDATE job_lease SET lease_until = clock_timestamp() - interval '1 millisecond'"
        " WHERE owner = %s AND lease_until >= clock_timestamp()",
        (owner,),
    )
    return cur.rowcount


async def start_run(
    conn: AsyncConn, kind: str, tenant_id: TenantId, created_by: str, *, table_id: int | None = None,
    dry_run: bool = False, deep: bool = False,
) -> int:
    table = RUN_TABLES[kind]
    columns = ["tenant_id", "status", "created_by"]
    values: list[Any] = [tenant_id, "running", created_by]
    if kind == "compaction":
        columns += ["table_id", "dry_run"]
        values += [table_id, dry_run]
    elif kind == "retention":
        columns.append("dry_run")
        values.append(dry_run)
    else:
        columns.append("deep")
        values.append(deep)
    cur = await conn.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(values))}) RETURNING run_id",
        values,
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["run_id"])


async def finish_run(conn: AsyncConn, kind: str, run_id: int, status: str, summary: dict[str, Any]) -> None:
    await conn.execute(
        f"UPDATE {RUN_TABLES[kind]} SET status = %s, summary = %s, finished_at = now() WHERE run_id = %s",
        (status, Jsonb(summary), run_id),
    )


# --- pins ------------------------------------------------------------------------------------

async def pin(
    conn: AsyncConn, tenant_id: TenantId, snapshot_id: int, reason: str, created_by: str, expires_at: datetime | None
) -> dict[str, Any]:
    # The snapshot row is share-locked: an expiry in flight (which locks it for update) either
    # finishes first — then the snapshot is expired and this is a 404 — or waits for the pin and
    # then sees it (expiry re-checks pins in a fresh statement).
    cur = await conn.execute(
        "WITH s AS (SELECT snapshot_id, tenant_id FROM snapshot"
        "   WHERE snapshot_id = %s AND tenant_id = %s AND expired_at IS NULL FOR SHARE)"
        " INSERT INTO snapshot_pin (snapshot_id, tenant_id, reason, created_by, expires_at)"
        " SELECT s.snapshot_id, s.tenant_id, %s, %s, %s FROM s"
        " ON CONFLICT (snapshot_id) DO UPDATE SET reason = EXCLUDED.reason, expires_at = EXCLUDED.expires_at"
        " RETURNING snapshot_id, reason, created_at, expires_at",
        (snapshot_id, tenant_id, reason, created_by, expires_at),
    )
    row = await cur.fetchone()
    if row is None:
        raise SnapshotNotFound("snapshot not found", snapshot_id=snapshot_id)
    return dict(row)


async def unpin(conn: AsyncConn, tenant_id: TenantId, snapshot_id: int) -> None:
    cur = await conn.execute(
        "DELETE FROM snapshot_pin WHERE tenant_id = %s AND snapshot_id = %s", (tenant_id, snapshot_id)
    )
    if cur.rowcount == 0:
        raise SnapshotNotFound("no pin on that snapshot", snapshot_id=snapshot_id)


# --- retention -------------------------------------------------------------------------------

async def expirable_snapshots(
    conn: AsyncConn, tenant_id: TenantId, keep: int, min_age: timedelta
) -> list[SnapshotId]:
    """Snapshots retention may expire: not among the newest ``keep``, older than ``min_age``,
    not pinned (or pin expired), not read by a running query (live lease), never the head."""
    cur = await conn.execute(
        "SELECT s.snapshot_id FROM snapshot s"
        " WHERE s.tenant_id = %(t)s AND s.expired_at IS NULL"
        "   AND s.created_at < now() - %(age)s"
        "   AND s.snapshot_id NOT IN (SELECT snapshot_id FROM snapshot WHERE tenant_id = %(t)s"
        "        AND expired_at IS NULL ORDER BY snapshot_id DESC LIMIT %(keep)s)"
        "   AND s.snapshot_id NOT IN (SELECT coalesce(head_snapshot_id, 0) FROM tenant_head WHERE tenant_id = %(t)s)"
        "   AND NOT EXISTS (SELECT 1 FROM snapshot_pin p WHERE p.snapshot_id = s.snapshot_id"
        "        AND (p.expires_at IS NULL OR p.expires_at > now()))"
        "   AND NOT EXISTS (SELECT 1 FROM snapshot_lease l WHERE l.snapshot_id = s.snapshot_id"
        "        AND l.expires_at > now())"
        " ORDER BY s.snapshot_id",
        {"t": tenant_id, "age": min_age, "keep": max(keep, 1)},
    )
    return [SnapshotId(r["snapshot_id"]) for r in await cur.fetchall()]


async def expire_snapshots(conn: AsyncConn, tenant_id: TenantId, snapshot_ids: list[SnapshotId]) -> list[SnapshotId]:
    # Lock the candidates first, then re-check pins and leases in a NEW statement (a fresh view):
    # a query that leases a snapshot and re-reads it with FOR SHARE either commits its lease
    # before this check (the snapshot is kept) or waits and then sees it expired (404).
    async with conn.transaction():
        await conn.execute(
            "SELECT snapshot_id FROM snapshot WHERE tenant_id = %s AND snapshot_id = ANY(%s)"
            " AND expired_at IS NULL ORDER BY snapshot_id FOR UPDATE",
            (tenant_id, snapshot_ids),
        )
        cur = await conn.execute(
            "UPDATE snapshot s SET expired_at = now() WHERE s.tenant_id = %s AND s.snapshot_id = ANY(%s)"
            " AND s.expired_at IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM snapshot_pin p WHERE p.snapshot_id = s.snapshot_id"
            "      AND (p.expires_at IS NULL OR p.expires_at > now()))"
            " AND NOT EXISTS (SELECT 1 FROM snapshot_lease l WHERE l.snapshot_id = s.snapshot_id"
            "      AND l.expires_at > now())"
            " RETURNING s.snapshot_id",
            (tenant_id, snapshot_ids),
        )
        expired = [SnapshotId(r["snapshot_id"]) for r in await cur.fetchall()]
    await conn.execute("DELETE FROM snapshot_lease WHERE tenant_id = %s AND expires_at < now()", (tenant_id,))
    return expired


@dataclass(frozen=True)
class Deletable:
    file_id: FileId
    table_id: TableId
    path: str
    file_size_bytes: int


async def deletable_files(
    conn: AsyncConn, tenant_id: TenantId, safety_age: timedelta, assume_expired: list[SnapshotId] | None = None
) -> list[Deletable]:
    """Files no retained snapshot references and that left the live set over ``safety_age`` ago
    (``assume_expired``: snapshots to treat as expired already, for dry runs)."""
    cur = await conn.execute(
        "SELECT f.file_id, f.table_id, f.path, f.file_size_bytes FROM data_file f"
        " WHERE f.tenant_id = %(t)s"
        "   AND NOT EXISTS (SELECT 1 FROM file_live_range r WHERE r.file_id = f.file_id"
        "        AND r.removed_snapshot_id IS NULL)"
        "   AND NOT EXISTS (SELECT 1 FROM file_live_range r JOIN snapshot s"
        "        ON s.tenant_id = r.tenant_id AND s.snapshot_id >= r.added_snapshot_id"
        "        AND s.snapshot_id < r.removed_snapshot_id AND s.expired_at IS NULL"
        "        AND s.snapshot_id <> ALL(%(assume)s::bigint[])"
        "        WHERE r.file_id = f.file_id)"
        "   AND (SELECT max(s.created_at) FROM file_live_range r JOIN snapshot s"
        "        ON s.snapshot_id = r.removed_snapshot_id WHERE r.file_id = f.file_id) < now() - %(age)s"
        " ORDER BY f.file_id",
        {"t": tenant_id, "age": safety_age, "assume": list(assume_expired or [])},
    )
    return [Deletable(FileId(r["file_id"]), TableId(r["table_id"]), r["path"], r["file_size_bytes"])
            for r in await cur.fetchall()]


async def forget_files(conn: AsyncConn, file_ids: list[FileId]) -> None:
    """Remove catalog rows of files whose objects are gone (ranges cascade)."""
    await conn.execute("DELETE FROM snapshot_file WHERE file_id = ANY(%s)", (file_ids,))
    await conn.execute("DELETE FROM data_file WHERE file_id = ANY(%s)", (file_ids,))


async def known_among(conn: AsyncConn, paths: list[str]) -> set[str]:
    """Which of ``paths`` a catalog row names (a fresh read, right before deleting orphans)."""
    cur = await conn.execute("SELECT path FROM data_file WHERE path = ANY(%s)", (paths,))
    return {r["path"] for r in await cur.fetchall()}


async def database_now(conn: AsyncConn) -> datetime:
    """The database clock: every age GC compares is measured by it, never by a worker's clock."""
    cur = await conn.execute("SELECT clock_timestamp() AS now")
    row = await cur.fetchone()
    assert row is not None
    moment: datetime = row["now"]
    return moment


async def known_paths(conn: AsyncConn, tenant_id: TenantId) -> set[str]:
    cur = await conn.execute("SELECT path FROM data_file WHERE tenant_id = %s", (tenant_id,))
    return {r["path"] for r in await cur.fetchall()}


@dataclass(frozen=True)
class ExpiredFile:
    table_id: TableId
    file_id: FileId
    max_token: int
    keyed: bool


async def expired_by_table_retention(conn: AsyncConn, tenant_id: TenantId) -> list[ExpiredFile]:
    """Live files entirely older than their table's ``retention_days``."""
    cur = await conn.execute(
        "SELECT r.table_id, r.file_id, f.max_token, cardinality(t.primary_key) > 0 AS keyed"
        " FROM file_live_range r JOIN data_file f USING (file_id)"
        " JOIN table_def t ON t.table_id = r.table_id"
        " WHERE r.tenant_id = %s AND r.removed_snapshot_id IS NULL AND t.retention_days IS NOT NULL"
        "   AND f.max_event_time < now() - make_interval(days => t.retention_days)"
        # Keyed tables: drop a file only when no kept file holds an older token, so a dropped
        # delete (or newer version) can never uncover an older version of a key. The commit
        # re-checks this, and unresolved events and dead letters too (NoOlderVersionsOutside).
        "   AND (cardinality(t.primary_key) = 0 OR NOT EXISTS ("
        "     SELECT 1 FROM file_live_range r2 JOIN data_file f2 USING (file_id)"
        "     WHERE r2.tenant_id = r.tenant_id AND r2.table_id = r.table_id AND r2.removed_snapshot_id IS NULL"
        "       AND f2.min_token < f.max_token"
        "       AND f2.max_event_time >= now() - make_interval(days => t.retention_days)))",
        (tenant_id,),
    )
    return [ExpiredFile(TableId(r["table_id"]), FileId(r["file_id"]), r["max_token"] or 0, r["keyed"])
            for r in await cur.fetchall()]


async def retained_files(conn: AsyncConn, tenant_id: TenantId) -> list[dict[str, Any]]:
    """Every file referenced by a retained (not expired) snapshot of the tenant."""
    cur = await conn.execute(
        "SELECT DISTINCT f.file_id, f.table_id, f.path, f.file_size_bytes, f.content_hash, f.record_count"
        " FROM data_file f JOIN file_live_range r USING (file_id)"
        " JOIN snapshot s ON s.tenant_id = r.tenant_id AND s.snapshot_id >= r.added_snapshot_id"
        "  AND (r.removed_snapshot_id IS NULL OR s.snapshot_id < r.removed_snapshot_id)"
        " WHERE f.tenant_id = %s AND s.expired_at IS NULL ORDER BY f.file_id",
        (tenant_id,),
    )
    return list(await cur.fetchall())


async def dangling_files(conn: AsyncConn, tenant_id: TenantId) -> list[dict[str, Any]]:
    """Catalog rows naming a table that does not exist."""
    cur = await conn.execute(
        "SELECT f.file_id, f.path, f.table_id FROM data_file f LEFT JOIN table_def t ON t.table_id = f.table_id"
        " WHERE f.tenant_id = %s AND (t.table_id IS NULL OR t.tenant_id <> f.tenant_id)",
        (tenant_id,),
    )
    return list(await cur.fetchall())


async def retained_references(conn: AsyncConn, tenant_id: TenantId, table_id: int | None = None) -> tuple[int, int]:
    """How many retained snapshots the tenant has, and how many (snapshot, file) references
    they hold (a file shared by ten snapshots counts ten times), optionally for one table."""
    cur = await conn.execute(
        "SELECT (SELECT count(*) FROM snapshot WHERE tenant_id = %(t)s AND expired_at IS NULL) AS snapshots,"
        " (SELECT count(*) FROM file_live_range r JOIN snapshot s ON s.tenant_id = r.tenant_id"
        "   AND s.snapshot_id >= r.added_snapshot_id"
        "   AND (r.removed_snapshot_id IS NULL OR s.snapshot_id < r.removed_snapshot_id)"
        "  WHERE r.tenant_id = %(t)s AND s.expired_at IS NULL"
        "   AND (%(table)s::bigint IS NULL OR r.table_id = %(table)s::bigint)) AS refs",
        {"t": tenant_id, "table": table_id},
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["snapshots"]), int(row["refs"])

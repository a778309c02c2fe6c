"""The commit protocol: the one way a snapshot is published (ADR 0006).

A publisher (coordinator, backfill, table create/alter/drop, restore, compaction, retention)
computes everything heavy first — Parquet files written under write intents, the files to add and
remove — and hands ``commit`` a ``CommitPlan``: the file changes, typed preconditions
(``requires``), state changes that must happen atomically with the publication (``effects``) and
a watermark policy. ``commit`` alone then, in one short transaction:

1. locks the tenant's head row (publication is serialized per tenant) and reserves the snapshot id;
2. applies every precondition, each re-checked inside the transaction with the database clock
   (``clock_timestamp()``, never a worker's clock) — a failure raises and rolls everything back;
3. takes the write intents of every added file (they must still be unexpired: a writer that
   stalled past its lease can no longer publish what orphan cleanup may have deleted);
4. applies the effects (events acked or failed, a table marked dropped, an audit row...);
5. computes the watermarks (advanced from the bus, or kept from the parent);
6. writes the snapshot, the change set and live ranges, pins every live table's schema version
   with its watermark, moves the head and sends NOTIFY (delivered on commit).

Steps are objects with ``apply(tx, ctx)``; the bus contributes its own (claim held, events
failed) so that event state and snapshot change together without a port ever passing a
transaction through its signature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from psycopg.types.json import Jsonb

from duckmesh.catalog import snapshots
from duckmesh.catalog.db import AsyncConn, CatalogPool
from duckmesh.catalog.notify import SNAPSHOT_CHANNEL
from duckmesh.catalog.snapshots import Head, Snapshot
from duckmesh.catalog.tokens import resolved_watermarks
from duckmesh.datafiles import NewDataFile
from duckmesh.domain import FileId, SnapshotId, SnapshotKind, TableId, TenantId, VisibilityToken
from duckmesh.errors import CommitConflict, LeaseLost, NothingToCommit, TenantNotFound


class WatermarkPolicy(StrEnum):
    ADVANCE = "advance"  # computed from the bus inside the transaction (events became visible or failed)
    KEEP = "keep"  # the parent's: the commit makes no event visible (compaction, restore, schema change)


@dataclass
class CommitContext:
    """What a step sees of the commit in progress."""

    tenant_id: TenantId
    snapshot_id: SnapshotId
    parent: Head
    resolved: int = 0  # events or reservations the steps resolved (committed or failed)


class Step(Protocol):
    """A precondition or an effect of a commit. ``apply`` runs inside the commit transaction after
    the head lock; a precondition raises (CommitConflict, LeaseLost, a not-found error...) when it
    no longer holds, which rolls the whole commit back."""

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None: ...


@dataclass(frozen=True)
class CommitPlan:
    tenant_id: TenantId
    kind: SnapshotKind
    created_by: str
    add: Sequence[NewDataFile] = ()
    remove: Sequence[FileId] = ()
    drop_tables: Sequence[TableId] = ()  # every live file of these tables leaves the live set
    restore_to: SnapshotId | None = None  # live tables get back the file sets they had in that snapshot
    requires: Sequence[Step] = ()
    effects: Sequence[Step] = ()
    watermark: WatermarkPolicy = WatermarkPolicy.ADVANCE
    skip_if_nothing_resolved: bool = False  # publish only if a step resolved something
    trace_id: str | None = None


async def commit(pool: CatalogPool, plan: CommitPlan) -> Snapshot:
    """Publish ``plan`` as one new snapshot, or raise and publish nothing."""
    async with pool.transaction() as tx:
        head = await _lock_head(tx, plan.tenant_id)
        cur = await tx.execute("SELECT nextval(pg_get_serial_sequence('snapshot', 'snapshot_id')) AS id")
        row = await cur.fetchone()
        assert row is not None
        ctx = CommitContext(plan.tenant_id, SnapshotId(row["id"]), head)
        for step in plan.requires:
            await step.apply(tx, ctx)
        await _take_intents(tx, [f.path for f in plan.add])
        for step in plan.effects:
            await step.apply(tx, ctx)
        if plan.skip_if_nothing_resolved and ctx.resolved == 0:
            raise NothingToCommit("nothing left to resolve")
        tenant_mark, table_marks = await _watermarks(tx, plan, head)
        snapshot = await _insert_snapshot(tx, plan, ctx, tenant_mark)
        await _change_files(tx, plan, ctx)
        await _pin_tables(tx, plan.tenant_id, ctx, tenant_mark, table_marks)
        await tx.execute(
            "UPDATE tenant_head SET head_snapshot_id = %s, max_visibility_token = %s, updated_at = now()"
            " WHERE tenant_id = %s",
            (ctx.snapshot_id, tenant_mark, plan.tenant_id),
        )
        await tx.execute("SELECT pg_notify(%s, %s)",
                         (SNAPSHOT_CHANNEL, f"{plan.tenant_id}:{ctx.snapshot_id}:{tenant_mark}"))
    return snapshot


async def _lock_head(tx: AsyncConn, tenant_id: TenantId) -> Head:
    cur = await tx.execute(
        "SELECT head_snapshot_id, max_visibility_token FROM tenant_head WHERE tenant_id = %s FOR UPDATE",
        (tenant_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise TenantNotFound("tenant does not exist", tenant_id=tenant_id)
    return Head(tenant_id, row["head_snapshot_id"], VisibilityToken(row["max_visibility_token"]))


async def _take_intents(tx: AsyncConn, paths: list[str]) -> None:
    """Every added file must still be covered by its writer's unexpired intent. Deleting the
    intent rows here locks them, so an orphan cleanup racing this commit waits for it and then
    finds the path published."""
    if not paths:
        return
    cur = await tx.execute(
        "DELETE FROM write_intent WHERE path = ANY(%s) AND expires_at > clock_timestamp() RETURNING path", (paths,)
    )
    if cur.rowcount != len(set(paths)):
        held = {r["path"] for r in await cur.fetchall()}
        raise LeaseLost("the write intent of a new file expired before publication",
                        paths=sorted(set(paths) - held)[:10])


async def _watermarks(
    tx: AsyncConn, plan: CommitPlan, head: Head
) -> tuple[VisibilityToken, dict[TableId, VisibilityToken]]:
    """The tenant watermark (never below the parent's) and the computed per-table marks."""
    if plan.watermark is WatermarkPolicy.KEEP:
        return head.max_visibility_token, {}
    marks = await resolved_watermarks(tx, plan.tenant_id)
    return VisibilityToken(max(marks.tenant, head.max_visibility_token)), marks.tables


async def _insert_snapshot(
    tx: AsyncConn, plan: CommitPlan, ctx: CommitContext, tenant_mark: VisibilityToken
) -> Snapshot:
    cur = await tx.execute(
        "INSERT INTO snapshot (snapshot_id, tenant_id, parent_snapshot_id, kind, created_by,"
        " max_visibility_token, trace_id) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
        (ctx.snapshot_id, plan.tenant_id, ctx.parent.snapshot_id, plan.kind.value, plan.created_by, tenant_mark,
         plan.trace_id),
    )
    row = await cur.fetchone()
    assert row is not None
    return Snapshot.from_row(row)


async def _change_files(tx: AsyncConn, plan: CommitPlan, ctx: CommitContext) -> None:
    remove: list[FileId] = list(plan.remove)
    readd: list[FileId] = []
    if plan.restore_to is not None:
        extra_remove, readd = await _restore_diff(tx, plan.tenant_id, plan.restore_to)
        remove += extra_remove
    if remove:
        cur = await tx.execute(
            "WITH gone AS (UPDATE file_live_range SET removed_snapshot_id = %(s)s"
            "  WHERE tenant_id = %(t)s AND file_id = ANY(%(ids)s) AND removed_snapshot_id IS NULL"
            "  RETURNING table_id, file_id)"
            " INSERT INTO snapshot_file (snapshot_id, table_id, file_id, change_type)"
            " SELECT %(s)s, table_id, file_id, 'remove' FROM gone",
            {"s": ctx.snapshot_id, "t": plan.tenant_id, "ids": remove},
        )
        if cur.rowcount != len(set(remove)):
            raise CommitConflict("a file to remove is no longer live (another commit changed the table first)")
    if plan.drop_tables:
        await tx.execute(
            "WITH gone AS (UPDATE file_live_range SET removed_snapshot_id = %(s)s"
            "  WHERE tenant_id = %(t)s AND table_id = ANY(%(tables)s) AND removed_snapshot_id IS NULL"
            "  RETURNING table_id, file_id)"
            " INSERT INTO snapshot_file (snapshot_id, table_id, file_id, change_type)"
            " SELECT %(s)s, table_id, file_id, 'remove' FROM gone",
            {"s": ctx.snapshot_id, "t": plan.tenant_id, "tables": list(plan.drop_tables)},
        )
    if plan.add:
        await _add_files(tx, plan.tenant_id, ctx.snapshot_id, plan.add)
    if readd:
        await tx.execute(
            "WITH f AS (SELECT file_id, table_id FROM data_file WHERE tenant_id = %(t)s AND file_id = ANY(%(ids)s)),"
            " c AS (INSERT INTO snapshot_file (snapshot_id, table_id, file_id, change_type)"
            "  SELECT %(s)s, table_id, file_id, 'add' FROM f)"
            " INSERT INTO file_live_range (tenant_id, table_id, file_id, added_snapshot_id)"
            " SELECT %(t)s, table_id, file_id, %(s)s FROM f",
            {"t": plan.tenant_id, "s": ctx.snapshot_id, "ids": readd},
        )


async def _restore_diff(tx: AsyncConn, tenant_id: TenantId, target: SnapshotId) -> tuple[list[FileId], list[FileId]]:
    """Files to remove and to bring back so that every live table has its file set of ``target``
    (a table dropped since stays dropped; one created since becomes empty)."""
    cur = await tx.execute(
        "SELECT table_id FROM table_def WHERE tenant_id = %s AND dropped_at IS NULL", (tenant_id,)
    )
    live_tables = {r["table_id"] for r in await cur.fetchall()}
    wanted = {f.file_id for f in await snapshots.live_files(tx, tenant_id, target) if f.table_id in live_tables}
    cur = await tx.execute(
        "SELECT file_id FROM file_live_range WHERE tenant_id = %s AND removed_snapshot_id IS NULL", (tenant_id,)
    )
    current = {FileId(r["file_id"]) for r in await cur.fetchall()}
    return sorted(current - wanted), sorted(wanted - current)


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


async def _pin_tables(
    tx: AsyncConn, tenant_id: TenantId, ctx: CommitContext, tenant_mark: VisibilityToken,
    table_marks: dict[TableId, VisibilityToken],
) -> None:
    """One row per live table: its schema version as of this snapshot and its watermark (the
    computed one, else the tenant's; never below the parent's)."""
    await tx.execute(
        "INSERT INTO snapshot_table_watermark (snapshot_id, table_id, max_visibility_token, schema_version)"
        " SELECT %(s)s, t.table_id, greatest(coalesce(m.mark, %(default)s), coalesce(p.max_visibility_token, 0)),"
        "  t.schema_version"
        " FROM table_def t"
        " LEFT JOIN unnest(%(tables)s::bigint[], %(marks)s::bigint[]) AS m(table_id, mark) ON m.table_id = t.table_id"
        " LEFT JOIN snapshot_table_watermark p ON p.snapshot_id = %(parent)s AND p.table_id = t.table_id"
        " WHERE t.tenant_id = %(t)s AND t.dropped_at IS NULL",
        {"s": ctx.snapshot_id, "t": tenant_id, "default": tenant_mark, "parent": ctx.parent.snapshot_id,
         "tables": list(table_marks), "marks": list(table_marks.values())},
    )


# --- preconditions the catalog knows ----------------------------------------------------------

@dataclass(frozen=True)
class TablesLive:
    """The tables files are added to still exist. Their rows are key-share locked until the commit
    ends, so a concurrent DROP (which locks them for update) waits and then fails the events."""

    table_ids: Sequence[TableId]

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        wanted = sorted(set(self.table_ids))
        cur = await tx.execute(
            "SELECT table_id FROM table_def WHERE tenant_id = %s AND table_id = ANY(%s) AND dropped_at IS NULL"
            " ORDER BY table_id FOR KEY SHARE",
            (ctx.tenant_id, wanted),
        )
        live = {r["table_id"] for r in await cur.fetchall()}
        if len(live) != len(wanted):
            raise CommitConflict("a table of this commit was dropped", dropped=sorted(set(wanted) - live))


@dataclass(frozen=True)
class SnapshotRetained:
    """A restore's target is still retained: its row is share-locked (an expiry in flight holds it
    for update, so we wait and then see it expired) and must not be expired."""

    snapshot_id: SnapshotId

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        await snapshots.get_snapshot(tx, ctx.tenant_id, self.snapshot_id, lock=True)


@dataclass(frozen=True)
class JobLeaseHeld:
    """A maintenance job still holds its (tenant, table, job) lease by the database clock."""

    table_id: int
    job: str
    owner: str

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        cur = await tx.execute(
            "SELECT 1 FROM job_lease WHERE tenant_id = %s AND table_id = %s AND job = %s AND owner = %s"
            " AND lease_until > clock_timestamp() FOR UPDATE",
            (ctx.tenant_id, self.table_id, self.job, self.owner),
        )
        if await cur.fetchone() is None:
            raise LeaseLost("the maintenance job lease expired before publication", job=self.job, owner=self.owner)


@dataclass(frozen=True)
class NoOlderVersionsOutside:
    """Delete markers of ``inputs`` may be dropped: no version of any key with a token below
    ``below`` can exist outside the inputs — not in another live file of the table, not in an
    unresolved event (claimed by a coordinator, awaiting lease recovery), not in a dead letter that
    could still be replayed with its original token, not in a pending backfill reservation.
    Files published after the inputs carry newer tokens and do not block."""

    table_id: TableId
    inputs: Sequence[FileId]
    below: int

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        blocking = await older_versions_outside(tx, ctx.tenant_id, self.table_id, self.inputs, self.below)
        if blocking:
            raise CommitConflict("older versions of keys exist outside the inputs; delete markers must stay",
                                 blocking=blocking)


async def older_versions_outside(
    conn: AsyncConn, tenant_id: TenantId, table_id: TableId, inputs: Sequence[FileId], below: int
) -> list[str]:
    """What could still hold a version older than ``below`` outside ``inputs`` (empty: nothing).
    The planner asks first (and keeps tombstones when something does); the commit asks again."""
    cur = await conn.execute(
        "SELECT"
        " EXISTS (SELECT 1 FROM file_live_range r JOIN data_file f USING (file_id)"
        "   WHERE r.tenant_id = %(t)s AND r.table_id = %(tb)s AND r.removed_snapshot_id IS NULL"
        "     AND r.file_id <> ALL(%(inputs)s) AND f.min_token < %(below)s) AS older_file,"
        " EXISTS (SELECT 1 FROM ingest_segment g WHERE g.tenant_id = %(t)s AND g.table_id = %(tb)s"
        "   AND g.state IN ('accepted', 'claimed') AND g.min_version < %(below)s) AS older_event,"
        " EXISTS (SELECT 1 FROM ingest_dead_letter d WHERE d.tenant_id = %(t)s AND d.table_id = %(tb)s"
        "   AND d.replayed_at IS NULL AND d.version_token < %(below)s) AS older_dead_letter,"
        " EXISTS (SELECT 1 FROM token_reservation v WHERE v.tenant_id = %(t)s AND v.table_id = %(tb)s"
        "   AND v.state = 'pending' AND v.min_token < %(below)s) AS older_reservation",
        {"t": tenant_id, "tb": table_id, "inputs": list(inputs), "below": below},
    )
    row = await cur.fetchone()
    assert row is not None
    return sorted(name for name, value in row.items() if value)

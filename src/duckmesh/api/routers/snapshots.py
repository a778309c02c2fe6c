from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from duckmesh.api import audit
from duckmesh.api.auth import require
from duckmesh.api.context import AppContext
from duckmesh.api.routing import api_router
from duckmesh.catalog import snapshots, tables
from duckmesh.catalog.snapshots import Snapshot
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Role, TenantId
from duckmesh.observability.logging import trace_id_var
from duckmesh.query.overview import OverviewReader
from duckmesh.tables.restore import restore_preview, restore_snapshot

router = api_router("snapshots")
SnapshotIdPath = Annotated[int, Path(ge=1, le=2**63 - 1)]
Reader = Annotated[Principal, Depends(require(Role.QUERY_READER, Role.TABLE_ADMIN, Role.OPS_ADMIN))]
Ops = Annotated[Principal, Depends(require(Role.OPS_ADMIN))]


class RestoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    snapshot_id: int = Field(ge=1, le=2**63 - 1)
    dry_run: bool = False  # list what would change; publish nothing


async def _describe(ctx: AppContext, tenant_id: TenantId, found: list[Snapshot]) -> list[dict[str, Any]]:
    ids = [s.snapshot_id for s in found]
    async with ctx.pool.connection() as conn:
        stats = await snapshots.table_summaries(conn, tenant_id, ids)
        pinned = await snapshots.pinned_ids(conn, tenant_id, ids)
        names = {t.table_id: t.table_name for t in await tables.all_tables(conn, tenant_id)}
    return [{
        "snapshot_id": s.snapshot_id,
        "parent_snapshot_id": s.parent_snapshot_id,
        "created_at": s.created_at.isoformat(),
        "created_by": s.created_by,
        "kind": s.kind.value,
        "max_visibility_token": s.max_visibility_token,
        "tables": {names.get(table_id, str(table_id)): value for table_id, value in stats[s.snapshot_id].items()},
        "pinned": s.snapshot_id in pinned,
    } for s in found]


@router.get("/v1/snapshots", responses={401: {}, 403: {}})
async def list_snapshots(
    principal: Reader, request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    async with ctx.pool.connection() as conn:
        found = await snapshots.list_snapshots(conn, principal.tenant_id, limit, before)
    described = await _describe(ctx, principal.tenant_id, found)
    next_before = found[-1].snapshot_id if len(found) == limit else None
    return {"snapshots": described, "next_before": next_before}


@router.get("/v1/snapshots/{snapshot_id}", responses={401: {}, 403: {}, 404: {}})
async def get_snapshot(snapshot_id: SnapshotIdPath, principal: Reader, request: Request) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    async with ctx.pool.connection() as conn:
        found = await snapshots.get_snapshot(conn, principal.tenant_id, snapshot_id)
        files = await snapshots.live_files(conn, principal.tenant_id, snapshot_id)
        names = {t.table_id: t.table_name for t in await tables.all_tables(conn, principal.tenant_id)}
    described = (await _describe(ctx, principal.tenant_id, [found]))[0]
    described["files"] = {}
    for data_file in files:
        described["files"].setdefault(names.get(data_file.table_id, str(data_file.table_id)), []).append({
            "file_id": data_file.file_id, "path": data_file.path, "record_count": data_file.record_count,
            "file_size_bytes": data_file.file_size_bytes, "min_token": data_file.min_token,
            "max_token": data_file.max_token, "schema_version": data_file.schema_version,
        })
    return described


@router.post("/v1/snapshots/restore", status_code=201, responses={401: {}, 403: {}, 404: {}})
async def restore(body: RestoreRequest, principal: Ops, request: Request, response: Response) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    if body.dry_run:
        response.status_code = 200
        return await _restore_preview(ctx, principal, body.snapshot_id)
    created = await restore_snapshot(
        ctx.pool, principal.tenant_id, body.snapshot_id, audit.created_by(principal),
        audit.entry(principal, "snapshot.restore", "snapshot", str(body.snapshot_id)),
    )
    return (await _describe(ctx, principal.tenant_id, [created]))[0]


async def _restore_preview(ctx: AppContext, principal: Principal, snapshot_id: int) -> dict[str, Any]:
    """Per live table: whether a restore would change it, its files and its rows now and after.
    ``rows_*`` are what a query sees (counted through the query path, now and at the target);
    ``stored_rows_*`` every stored row (a keyed table's older versions and delete markers too)."""
    changes = await restore_preview(ctx.pool, principal.tenant_id, snapshot_id)
    reader = OverviewReader(ctx.pool, ctx.query)
    changed = [c.table for c in changes if c.changed]
    now = await reader.counts(principal, changed, trace_id_var.get())
    after = await reader.counts(principal, [c.table for c in changes if c.changed and c.existed_at_target],
                                trace_id_var.get(), snapshot_id)
    return {"dry_run": True, "snapshot_id": snapshot_id, "tables": [{
        "table_name": c.table.table_name, "changed": c.changed,
        "files_now": len(c.files_now), "files_after": len(c.files_after),
        "files_removed": len(c.files_now - c.files_after), "files_restored": len(c.files_after - c.files_now),
        "rows_now": (now or {}).get(c.table.table_name) if c.changed else None,
        "rows_after": (0 if not c.existed_at_target else (after or {}).get(c.table.table_name)) if c.changed
        else None,
        "stored_rows_now": c.stored_rows_now, "stored_rows_after": c.stored_rows_after,
    } for c in changes]}

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from duckmesh.api import audit
from duckmesh.api.auth import require
from duckmesh.api.context import AppContext
from duckmesh.api.routing import api_router
from duckmesh.catalog import snapshots, tables
from duckmesh.catalog.snapshots import Snapshot
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Role, TenantId
from duckmesh.tables.restore import restore_snapshot

router = api_router("snapshots")
SnapshotIdPath = Annotated[int, Path(ge=1, le=2**63 - 1)]
Reader = Annotated[Principal, Depends(require(Role.QUERY_READER, Role.TABLE_ADMIN, Role.OPS_ADMIN))]
Ops = Annotated[Principal, Depends(require(Role.OPS_ADMIN))]


class RestoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    snapshot_id: int = Field(ge=1, le=2**63 - 1)


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
async def restore(body: RestoreRequest, principal: Ops, request: Request) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    created = await restore_snapshot(
        ctx.pool, principal.tenant_id, body.snapshot_id, audit.created_by(principal),
        audit.entry(principal, "snapshot.restore", "snapshot", str(body.snapshot_id)),
    )
    return (await _describe(ctx, principal.tenant_id, [created]))[0]

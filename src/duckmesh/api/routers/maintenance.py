from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from duckmesh.api.auth import require
from duckmesh.api.context import AppContext
from duckmesh.api.routing import api_router
from duckmesh.catalog import audit, maintenance, tables
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Role
from duckmesh.errors import IntegrityCheckFailed, RequestInvalid
from duckmesh.observability.logging import trace_id_var

router = api_router("operations")
Ops = Annotated[Principal, Depends(require(Role.OPS_ADMIN))]


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    table: str | None = None
    dry_run: bool = False


class IntegrityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    table: str | None = None
    deep: bool = False


class PinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    snapshot_id: int = Field(ge=1, le=2**63 - 1)
    reason: str = Field(max_length=1000, pattern=r"^[^\x00]*$")
    expires_at: datetime | None = Field(default=None, strict=False)


class RunResponse(BaseModel):
    status: str
    summary: dict[str, Any]


async def _audit(request: Request, principal: Principal, action: str, object_type: str, object_id: str | None,
                 details: dict[str, Any]) -> None:
    ctx: AppContext = request.app.state.ctx
    async with ctx.pool.connection() as conn:
        await audit.record(conn, principal, action, object_type, object_id, details, trace_id_var.get())


@router.post("/v1/compaction/run", response_model=RunResponse, responses={401: {}, 403: {}, 404: {}})
async def run_compaction(principal: Ops, request: Request, body: RunRequest | None = None) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    body = body or RunRequest()
    summary = await ctx.maintenance.compact(principal.tenant_id, body.table, body.dry_run)
    await _audit(request, principal, "compaction.run", "tenant", str(principal.tenant_id), body.model_dump())
    return {"status": "completed", "summary": summary}


@router.post("/v1/retention/run", response_model=RunResponse, responses={400: {}, 401: {}, 403: {}})
async def run_retention(principal: Ops, request: Request, body: RunRequest | None = None) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    body = body or RunRequest()
    if body.table is not None:
        raise RequestInvalid("retention runs per tenant; omit table")
    summary = await ctx.maintenance.retain(principal.tenant_id, body.dry_run)
    await _audit(request, principal, "retention.run", "tenant", str(principal.tenant_id), body.model_dump())
    return {"status": "completed", "summary": summary}


@router.post("/v1/integrity/run", response_model=RunResponse, responses={401: {}, 403: {}, 409: {}})
async def run_integrity(principal: Ops, request: Request, body: IntegrityRequest | None = None) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    body = body or IntegrityRequest()
    table_id = None
    if body.table is not None:
        async with ctx.pool.connection() as conn:
            table_id = (await tables.get_table(conn, principal.tenant_id, body.table)).table_id
    # Audited once it ran (a refused request, e.g. an unknown table, did not), failed or not.
    try:
        summary = await ctx.maintenance.integrity.run(principal.tenant_id, body.deep, table_id)
    except IntegrityCheckFailed:
        await _audit(request, principal, "integrity.run", "tenant", str(principal.tenant_id),
                     {**body.model_dump(), "status": "failed"})
        raise
    await _audit(request, principal, "integrity.run", "tenant", str(principal.tenant_id),
                 {**body.model_dump(), "status": "completed"})
    return {"status": "completed", "summary": summary}


@router.post("/v1/snapshots/pin", status_code=201, responses={401: {}, 403: {}, 404: {}})
async def pin_snapshot(body: PinRequest, principal: Ops, request: Request) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    async with ctx.pool.connection() as conn:
        pinned = await maintenance.pin(conn, principal.tenant_id, body.snapshot_id, body.reason,
                                       principal.key_id or "anonymous", body.expires_at)
    await _audit(request, principal, "snapshot.pin", "snapshot", str(body.snapshot_id), {"reason": body.reason})
    return {key: (value.isoformat() if isinstance(value, datetime) else value) for key, value in pinned.items()}


@router.delete("/v1/snapshots/pin/{snapshot_id}", status_code=204, responses={401: {}, 403: {}, 404: {}})
async def unpin_snapshot(
    snapshot_id: Annotated[int, Path(ge=1, le=2**63 - 1)], principal: Ops, request: Request
) -> None:
    ctx: AppContext = request.app.state.ctx
    async with ctx.pool.connection() as conn:
        await maintenance.unpin(conn, principal.tenant_id, snapshot_id)
    await _audit(request, principal, "snapshot.unpin", "snapshot", str(snapshot_id), {})

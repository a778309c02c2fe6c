from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query, Request

from duckmesh.api.auth import require
from duckmesh.api.context import AppContext
from duckmesh.api.routing import api_router
from duckmesh.bus import operations
from duckmesh.catalog import audit
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Role

router = api_router("operations")
Ops = Annotated[Principal, Depends(require(Role.OPS_ADMIN))]


@router.get("/v1/lag", responses={401: {}, 403: {}})
async def lag(principal: Ops, request: Request) -> dict[str, Any]:
    """The tenant's ingest lag and freshness, with the same counts per live table."""
    ctx: AppContext = request.app.state.ctx
    counts = await ctx.bus.lag(principal.tenant_id)
    fresh = await operations.freshness(ctx.pool, principal.tenant_id)
    per_table = await operations.lag_by_table(ctx.pool, principal.tenant_id)
    return {
        "tenant_id": principal.tenant_id,
        **counts,
        # the reference implementation's names: events not yet claimed, and the pending age
        "accepted_events": counts["pending_events"],
        "oldest_pending_lag_ms": counts["oldest_pending_age_ms"] or 0,
        "latest_issued_token": fresh.latest_issued_token,
        "latest_visibility_token": fresh.latest_visibility_token,
        "token_lag": fresh.latest_issued_token - fresh.latest_visibility_token,
        "latest_snapshot_id": fresh.latest_snapshot_id,
        "latest_snapshot_time": fresh.latest_snapshot_time.isoformat() if fresh.latest_snapshot_time else None,
        "tables": {t.table_name: t.to_json() for t in per_table},
    }


@router.get("/v1/audit", responses={401: {}, 403: {}})
async def audit_trail(
    principal: Ops, request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> dict[str, Any]:
    """Admin and security-relevant actions of the caller's tenant, newest first."""
    ctx: AppContext = request.app.state.ctx
    async with ctx.pool.connection() as conn:
        entries = await audit.recent(conn, principal.tenant_id, limit, before)
    return {"entries": entries, "next_before": entries[-1]["audit_id"] if len(entries) == limit else None}

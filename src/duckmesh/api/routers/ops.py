from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from starlette.responses import Response

from duckmesh.api.auth import require
from duckmesh.api.context import AppContext
from duckmesh.api.routing import api_router
from duckmesh.catalog import audit, migrate, snapshots
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Role
from duckmesh.errors import NotReady
from duckmesh.observability import metrics

router = api_router("operations")
Ops = Annotated[Principal, Depends(require(Role.OPS_ADMIN))]


@router.get("/v1/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/v1/ready", responses={503: {}})
async def ready(request: Request) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    checks: dict[str, str] = {}
    try:
        async with ctx.pool.connection() as conn:
            cur = await conn.execute("SELECT coalesce(max(version), 0) AS v FROM schema_migrations")
            row = await cur.fetchone()
        current = row["v"] if row else 0
        checks["catalog"] = "ok"
        checks["migrations"] = "ok" if current == migrate.latest_version() else f"at {current}"
    except Exception:
        checks["catalog"] = "unreachable"
    try:
        await asyncio.wait_for(asyncio.to_thread(ctx.store.check_writable), timeout=5)
        checks["object_store"] = "ok"
    except Exception:
        checks["object_store"] = "not writable"
    failed = sorted(name for name, state in checks.items() if state != "ok")
    if failed:
        raise NotReady(f"not ready: {', '.join(failed)}", failed=failed, checks=checks)
    return {"status": "ready", "checks": checks}


@router.get("/v1/metrics", response_class=Response)
async def prometheus() -> Response:
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/lag", responses={401: {}, 403: {}})
async def lag(principal: Ops, request: Request) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    counts = await ctx.bus.lag(principal.tenant_id)
    async with ctx.pool.connection() as conn:
        head = await snapshots.head(conn, principal.tenant_id)
        cur = await conn.execute(
            "SELECT c.next_visibility_token - 1 AS issued, s.created_at FROM tenant_counter c"
            " LEFT JOIN snapshot s ON s.snapshot_id = %s WHERE c.tenant_id = %s",
            (head.snapshot_id, principal.tenant_id),
        )
        row = await cur.fetchone()
    assert row is not None
    return {
        "tenant_id": principal.tenant_id,
        **counts,
        # the reference implementation's names: events not yet claimed, and the pending age
        "accepted_events": counts["pending_events"],
        "oldest_pending_lag_ms": counts["oldest_pending_age_ms"] or 0,
        "latest_issued_token": row["issued"],
        "latest_visibility_token": head.max_visibility_token,
        "token_lag": row["issued"] - head.max_visibility_token,
        "latest_snapshot_id": head.snapshot_id,
        "latest_snapshot_time": row["created_at"].isoformat() if row["created_at"] else None,
        "tables": {},
    }


@router.get("/v1/audit", responses={401: {}, 403: {}})
async def audit_trail(
    principal: Ops, request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, before: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, Any]:
    """Admin and security-relevant actions of the caller's tenant, newest first."""
    ctx: AppContext = request.app.state.ctx
    async with ctx.pool.connection() as conn:
        entries = await audit.recent(conn, principal.tenant_id, limit, before)
    return {"entries": entries, "next_before": entries[-1]["audit_id"] if len(entries) == limit else None}

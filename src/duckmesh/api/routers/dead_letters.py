from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from duckmesh.api.auth import require
from duckmesh.api.context import AppContext
from duckmesh.api.routing import api_router
from duckmesh.api.write_guard import writable
from duckmesh.bus.dead_letters import dead_letters, replay_dead_letters
from duckmesh.catalog import audit
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Role
from duckmesh.observability.logging import trace_id_var

router = api_router("operations")
Ops = Annotated[Principal, Depends(require(Role.OPS_ADMIN))]
Replayer = Annotated[Principal, Depends(writable(Role.OPS_ADMIN))]  # a replay is a write


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    event_ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] = Field(min_length=1, max_length=10_000)


@router.get("/v1/dead-letters", responses={401: {}, 403: {}})
async def list_dead_letters(
    principal: Ops, request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    rows = await dead_letters(ctx.pool, principal.tenant_id, limit, after)
    items = [{**row, "failed_at": row["failed_at"].isoformat() if row["failed_at"] else None} for row in rows]
    return {"dead_letters": items, "next_after": rows[-1]["event_id"] if len(rows) == limit else None}


@router.post("/v1/dead-letters/replay", responses={400: {}, 401: {}, 403: {}, 503: {}})
async def replay(body: ReplayRequest, principal: Replayer, request: Request) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    replayed = await replay_dead_letters(ctx.pool, principal.tenant_id, body.event_ids)
    done = {r["event_id"] for r in replayed}
    async with ctx.pool.connection() as conn:
        await audit.record(conn, principal, "dead_letters.replay", "event", None,
                           {"event_ids": sorted(done)}, trace_id_var.get())
    return {
        "replayed": replayed,
        "replayed_count": len(replayed),
        "skipped_event_ids": sorted(set(body.event_ids) - done),
        "max_visibility_token": max((r["visibility_token"] for r in replayed), default=None),
    }

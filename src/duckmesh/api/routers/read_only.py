"""Emergency read-only mode of the caller's tenant (ADR 0012). The global switch is not here: only
the CLI (``duckmesh read-only on --global``) sets it, so no tenant's key can stop every tenant."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from duckmesh.api.auth import require
from duckmesh.api.context import AppContext
from duckmesh.api.routing import api_router
from duckmesh.catalog import read_only
from duckmesh.catalog.read_only import Actor, ReadOnlyState
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Role, TenantId
from duckmesh.observability.logging import trace_id_var

router = api_router("operations")
Ops = Annotated[Principal, Depends(require(Role.OPS_ADMIN))]


class ReadOnlyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool
    reason: str | None = Field(default=None, min_length=1, max_length=500)

    @field_validator("reason")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and any(ord(c) < 32 and c not in "\t" for c in value):
            raise ValueError("reason must not contain control characters")
        return value

    @model_validator(mode="after")
    def _reason_to_switch_on(self) -> ReadOnlyRequest:
        if self.enabled and not self.reason:
            raise ValueError("switching read-only mode on needs a reason")
        return self


def _answer(tenant_id: TenantId, state: ReadOnlyState) -> dict[str, Any]:
    mine = state.tenants.get(tenant_id)
    return {
        "tenant_id": tenant_id,
        "read_only": state.switch_for(tenant_id) is not None,
        "tenant": mine.to_json() if mine else None,
        "global": state.global_switch.to_json() if state.global_switch else None,
    }


@router.get("/v1/read-only", responses={401: {}, 403: {}})
async def get_read_only(principal: Ops, request: Request) -> dict[str, Any]:
    """Whether the caller's tenant may write now, and which switch stops it."""
    ctx: AppContext = request.app.state.ctx
    async with ctx.pool.connection() as conn:
        state = await read_only.load(conn)
    return _answer(principal.tenant_id, state)


@router.put("/v1/read-only", responses={400: {}, 401: {}, 403: {}})
async def set_read_only(body: ReadOnlyRequest, principal: Ops, request: Request) -> dict[str, Any]:
    """Switch the caller's tenant into or out of read-only mode (audited; every API process sees it
    at once through NOTIFY, at the latest after its cache TTL)."""
    ctx: AppContext = request.app.state.ctx
    actor = Actor(principal, trace_id=trace_id_var.get())
    async with ctx.pool.connection() as conn:
        if body.enabled:
            assert body.reason is not None
            await read_only.switch_on(conn, principal.tenant_id, body.reason, actor)
        else:
            await read_only.switch_off(conn, principal.tenant_id, actor)
        state = await read_only.load(conn)
    ctx.read_only.invalidate()
    return _answer(principal.tenant_id, state)

"""API key management for a tenant's ``ops_admin``: create (shown once), list, revoke; audited."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from duckmesh.api.auth import require
from duckmesh.api.context import AppContext
from duckmesh.api.routing import api_router
from duckmesh.catalog import keys, tenants
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Role
from duckmesh.errors import RequestInvalid
from duckmesh.observability.logging import trace_id_var

router = api_router("keys")
Ops = Annotated[Principal, Depends(require(Role.OPS_ADMIN))]
KeyId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    roles: list[Annotated[Role, Field(strict=False)]] = Field(min_length=1, max_length=4)  # enum values from JSON
    expires_at: datetime | None = Field(default=None, strict=False)


class KeyInfo(BaseModel):
    key_id: str
    tenant_id: int
    roles: list[str]
    created_at: str | None
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None


class CreatedKey(KeyInfo):
    key: str


class KeyList(BaseModel):
    keys: list[KeyInfo]


@router.post("/v1/keys", status_code=201, response_model=CreatedKey, responses={400: {}, 401: {}, 403: {}})
async def create_key(body: CreateKey, principal: Ops, request: Request) -> dict[str, Any]:
    """A new key of the caller's tenant with the given roles (and expiry); the secret is shown once."""
    ctx: AppContext = request.app.state.ctx
    expires_at = body.expires_at
    if expires_at is not None:
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at <= datetime.now(UTC):
            raise RequestInvalid("expires_at is in the past", expires_at=expires_at.isoformat())
    async with ctx.pool.connection() as conn:
        created, secret = await keys.create(conn, principal.tenant_id, body.roles, expires_at=expires_at,
                                            principal=principal, trace_id=trace_id_var.get())
    return {**created.to_json(), "key": secret}


@router.get("/v1/keys", response_model=KeyList, responses={401: {}, 403: {}})
async def list_keys(principal: Ops, request: Request) -> dict[str, Any]:
    """Every key of the caller's tenant: ids, roles and dates, never a secret."""
    ctx: AppContext = request.app.state.ctx
    async with ctx.pool.connection() as conn:
        found = await tenants.list_keys(conn, principal.tenant_id)
    return {"keys": [key.to_json() for key in found]}


@router.delete("/v1/keys/{key_id}", response_model=KeyInfo, responses={400: {}, 401: {}, 403: {}, 404: {}})
async def revoke_key(key_id: KeyId, principal: Ops, request: Request) -> dict[str, Any]:
    """Revoke a key of the caller's tenant; every server refuses it from the next request on."""
    ctx: AppContext = request.app.state.ctx
    async with ctx.pool.connection() as conn:
        revoked = await keys.revoke(conn, key_id, tenant_id=principal.tenant_id, principal=principal,
                                    trace_id=trace_id_var.get())
    ctx.keys.forget(key_id)
    return revoked.to_json()

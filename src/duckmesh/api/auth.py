"""Authentication and role checks. The tenant always comes from the key when auth is on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from duckmesh.api.context import AppContext
from duckmesh.catalog import tenants
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import ALL_ROLES, Role, TenantId
from duckmesh.errors import Forbidden, Unauthorized


def presented_key(authorization: str, api_key: str | None) -> str | None:
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return api_key or None


async def authenticate(request: Request) -> Principal:
    """The caller's principal; the auth gate (``middleware.py``) has usually found it already,
    before the body was read."""
    known = request.scope.get("state", {}).get("principal")
    if isinstance(known, Principal):
        return known
    ctx: AppContext = request.app.state.ctx
    return await principal_of(ctx, request.headers.get("authorization", ""), request.headers.get("x-api-key"),
                              request.headers.get("x-tenant-id"))


async def principal_of(
    ctx: AppContext, authorization: str, api_key: str | None, tenant_header: str | None
) -> Principal:
    """The principal the request's headers name (shared by the auth gate and the route dependency)."""
    if not ctx.settings.auth_required:
        # Dev mode only: X-Tenant-ID names the tenant and the caller has every role.
        name = tenant_header or ctx.settings.bootstrap_tenant
        async with ctx.pool.connection() as conn:
            tenant = await tenants.get_tenant(conn, name)
        return Principal(TenantId(tenant.tenant_id), None, ALL_ROLES)
    key = presented_key(authorization, api_key)
    if key is None:
        raise Unauthorized("missing API key: send Authorization: Bearer <key> or X-API-Key")
    cached = ctx.keys.get(key)
    if cached is not None:
        verified, due = cached
        if due and verified.principal.key_id:
            async with ctx.pool.connection() as conn:
                await tenants.touch_key(conn, verified.principal.key_id)
        return verified.principal
    async with ctx.pool.connection() as conn:
        verified = await tenants.verify_key(conn, key)
    ctx.keys.put(key, verified)
    return verified.principal


def require(*roles: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency that authenticates and checks the caller holds at least one of ``roles``."""

    async def dependency(request: Request) -> Principal:
        principal = await authenticate(request)
        if not principal.roles.intersection(roles):
            raise Forbidden(
                "the key lacks the role this action needs", required=[r.value for r in roles]
            )
        request.state.principal = principal
        return principal

    return dependency

"""Authentication and role checks. The tenant always comes from the key when auth is on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from duckmesh.api.context import AppContext
from duckmesh.catalog import tenants
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import ALL_ROLES, Role, TenantId
from duckmesh.errors import Forbidden, Unauthorized


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.headers.get("x-api-key") or None


async def authenticate(request: Request) -> Principal:
    ctx: AppContext = request.app.state.ctx
    if not ctx.settings.auth_required:
        # Dev mode only: X-Tenant-ID names the tenant and the caller has every role.
        name = request.headers.get("x-tenant-id") or ctx.settings.bootstrap_tenant
        async with ctx.pool.connection() as conn:
            tenant = await tenants.get_tenant(conn, name)
        return Principal(TenantId(tenant.tenant_id), None, ALL_ROLES)
    key = _presented_key(request)
    if key is None:
        raise Unauthorized("missing API key: send Authorization: Bearer <key> or X-API-Key")
    async with ctx.pool.connection() as conn:
        return await tenants.authenticate(conn, key)


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

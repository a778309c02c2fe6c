"""The write guard: every route that changes a tenant's data or tables authenticates, then refuses
with 503 ``READ_ONLY`` while the tenant (or the whole service) is in read-only mode (ADR 0012).

The check reads the process's in-memory switches (``AppContext.read_only``), so it costs no catalog
round trip; authentication comes first, so a caller without a valid key learns nothing about it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from duckmesh.api.auth import require
from duckmesh.api.context import AppContext
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Role


def writable(*roles: Role) -> Callable[[Request], Awaitable[Principal]]:
    """``require(*roles)``, then the read-only check for the caller's tenant."""
    authenticated = require(*roles)

    async def dependency(request: Request) -> Principal:
        principal = await authenticated(request)
        ctx: AppContext = request.app.state.ctx
        await ctx.read_only.check_writable(principal.tenant_id)
        return principal

    return dependency

"""API key management with its audit row: creating or revoking a key and recording who did it
happen in one transaction (the audit row exists exactly when the change does)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from duckmesh.catalog import audit, tenants
from duckmesh.catalog.db import AsyncConn
from duckmesh.catalog.tenants import ApiKey, Principal
from duckmesh.domain import Role, TenantId


async def create(
    conn: AsyncConn, tenant_id: TenantId, roles: Iterable[Role], *, expires_at: datetime | None = None,
    key: str | None = None, principal: Principal | None = None, actor: str | None = None,
    trace_id: str | None = None,
) -> tuple[ApiKey, str]:
    """A new key (shown once) and its ``key.create`` audit row."""
    wanted = sorted({r.value for r in roles})
    async with conn.transaction():
        created, secret = await tenants.create_key(conn, tenant_id, [Role(r) for r in wanted], key, expires_at)
        await audit.record(
            conn, principal, "key.create", "api_key", created.key_id,
            {"roles": wanted, "expires_at": expires_at.isoformat() if expires_at else None}, trace_id,
            tenant_id=tenant_id, actor=actor,
        )
    return created, secret


async def revoke(
    conn: AsyncConn, key_id: str, *, tenant_id: TenantId | None = None, principal: Principal | None = None,
    actor: str | None = None, trace_id: str | None = None,
) -> ApiKey:
    """Revoke a key (only of ``tenant_id`` when given) with its ``key.revoke`` audit row; every
    process forgets the key when the transaction commits (NOTIFY)."""
    async with conn.transaction():
        revoked = await tenants.revoke_key(conn, key_id, tenant_id)
        await audit.record(conn, principal, "key.revoke", "api_key", key_id, {}, trace_id,
                           tenant_id=revoked.tenant_id, actor=actor)
    return revoked

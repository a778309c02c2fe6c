"""The admin audit trail: who did what to which object, when, from which trace id."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from duckmesh.catalog.db import AsyncConn
from duckmesh.catalog.tenants import Principal


async def record(
    conn: AsyncConn,
    principal: Principal | None,
    action: str,
    object_type: str,
    object_id: str | None,
    details: dict[str, Any] | None = None,
    trace_id: str | None = None,
    *,
    tenant_id: int | None = None,
    actor: str | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO admin_audit (tenant_id, actor, action, object_type, object_id, details, trace_id)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (
            principal.tenant_id if principal else tenant_id,
            actor or (principal.key_id if principal and principal.key_id else "anonymous"),
            action, object_type, object_id, Jsonb(details or {}), trace_id,
        ),
    )

"""The admin audit trail: who did what to which object, when, from which trace id."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from duckmesh.catalog.db import AsyncConn
from duckmesh.catalog.tenants import Principal

if TYPE_CHECKING:
    from duckmesh.catalog.commit import CommitContext


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


@dataclass(frozen=True)
class AuditEntry:
    """Commit effect: the action's audit row, written in the action's own transaction (it exists
    exactly when the action happened). ``details`` get the new snapshot id."""

    principal: Principal | None
    action: str
    object_type: str
    object_id: str | None
    details: dict[str, Any] = field(default_factory=dict)
    trace_id: str | None = None
    actor: str | None = None

    async def apply(self, tx: AsyncConn, ctx: CommitContext) -> None:
        await record(tx, self.principal, self.action, self.object_type, self.object_id,
                     {**self.details, "snapshot_id": ctx.snapshot_id}, self.trace_id,
                     tenant_id=ctx.tenant_id, actor=self.actor)


async def recent(conn: AsyncConn, tenant_id: int, limit: int, before: int | None = None) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT audit_id, actor, action, object_type, object_id, details, trace_id, created_at FROM admin_audit"
        " WHERE tenant_id = %s AND audit_id < %s ORDER BY audit_id DESC LIMIT %s",
        (tenant_id, before if before is not None else 2**62, limit),
    )
    return [{**row, "created_at": row["created_at"].isoformat()} for row in await cur.fetchall()]

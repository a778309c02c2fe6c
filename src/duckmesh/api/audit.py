"""Audit rows of API actions: an ``AuditEntry`` for actions that commit a snapshot (written in
the commit's transaction), ``record`` for the others."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from duckmesh.api.context import AppContext
from duckmesh.catalog import audit
from duckmesh.catalog.audit import AuditEntry
from duckmesh.catalog.tenants import Principal
from duckmesh.observability.logging import trace_id_var


def entry(principal: Principal, action: str, object_type: str, object_id: str | None,
          details: dict[str, Any] | None = None) -> AuditEntry:
    return AuditEntry(principal, action, object_type, object_id, details or {}, trace_id_var.get())


async def record(request: Request, principal: Principal, action: str, object_type: str, object_id: str | None,
                 details: dict[str, Any] | None = None) -> None:
    ctx: AppContext = request.app.state.ctx
    async with ctx.pool.connection() as conn:
        await audit.record(conn, principal, action, object_type, object_id, details or {}, trace_id_var.get())


def created_by(principal: Principal) -> str:
    """The snapshot's ``created_by`` for an API action: the key id."""
    return principal.key_id or "api"

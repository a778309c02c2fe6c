"""Emergency read-only mode (ADR 0012): the switches and the per-process cache that enforces them.

A switch is a catalog row: for one tenant (set through the API by the tenant's ``ops_admin`` or by
the CLI) or for every tenant (the global switch: only the CLI, i.e. whoever holds the catalog
credentials, may set it, so no tenant's key can stop the others' writes). Turning a switch on or
off writes its audit row and a NOTIFY in the same transaction.

Every API process keeps the switches in memory (``ReadOnlyCache``): a write checks a dict, not
the catalog. The cache reloads when a NOTIFY on ``READ_ONLY_CHANNEL`` says a switch changed, and
in any case once it is ``ttl`` seconds old (a missed notification, a listener reconnecting), so a
switch takes effect everywhere within milliseconds normally and within the TTL at worst.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from duckmesh.catalog import audit
from duckmesh.catalog.db import AsyncConn, CatalogPool
from duckmesh.catalog.notify import READ_ONLY_CHANNEL
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import TenantId
from duckmesh.errors import DuckMeshError, ReadOnly
from duckmesh.observability import metrics

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 5.0
RELOAD_RETRY_SECONDS = 1.0  # after a failed reload, the last known state is used this long
# What a refused writer is told to wait before trying again (read-only mode lasts minutes, not ms).
RETRY_AFTER_SECONDS = 10


@dataclass(frozen=True)
class Switch:
    tenant_id: TenantId | None  # None: the global switch
    reason: str
    set_by: str
    set_at: datetime

    @property
    def scope(self) -> str:
        return "global" if self.tenant_id is None else "tenant"

    def to_json(self) -> dict[str, Any]:
        return {"scope": self.scope, "tenant_id": self.tenant_id, "reason": self.reason, "set_by": self.set_by,
                "since": self.set_at.isoformat()}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Switch:
        tenant = row["tenant_id"]
        return cls(None if tenant is None else TenantId(tenant), row["reason"], row["set_by"], row["set_at"])


@dataclass(frozen=True)
class ReadOnlyState:
    global_switch: Switch | None = None
    tenants: dict[TenantId, Switch] = field(default_factory=dict)

    def switch_for(self, tenant_id: TenantId) -> Switch | None:
        """The switch that makes the tenant read-only (the global one first), or None."""
        return self.global_switch or self.tenants.get(tenant_id)


async def load(conn: AsyncConn) -> ReadOnlyState:
    cur = await conn.execute("SELECT tenant_id, reason, set_by, set_at FROM read_only_switch")
    switches = [Switch.from_row(row) for row in await cur.fetchall()]
    found = next((s for s in switches if s.tenant_id is None), None)
    return ReadOnlyState(found, {s.tenant_id: s for s in switches if s.tenant_id is not None})


@dataclass(frozen=True)
class Actor:
    """Who flips a switch: an API key (``principal``) or the CLI."""

    principal: Principal | None = None
    name: str = "cli"
    trace_id: str | None = None

    @property
    def label(self) -> str:
        if self.principal is not None:
            return self.principal.key_id or "anonymous"
        return self.name


async def switch_on(conn: AsyncConn, tenant_id: TenantId | None, reason: str, actor: Actor) -> Switch:
    """Make the tenant (None: every tenant) read-only; switching an active switch on again keeps
    its start time and takes the new reason."""
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO read_only_switch (tenant_id, reason, set_by) VALUES (%s, %s, %s)"
            " ON CONFLICT ((coalesce(tenant_id, 0))) DO UPDATE SET reason = EXCLUDED.reason, set_by = EXCLUDED.set_by"
            " RETURNING tenant_id, reason, set_by, set_at",
            (tenant_id, reason, actor.label),
        )
        row = await cur.fetchone()
        assert row is not None
        switch = Switch.from_row(row)
        await _audit(conn, "read_only.on", switch, actor)
    return switch


async def switch_off(conn: AsyncConn, tenant_id: TenantId | None, actor: Actor) -> Switch | None:
    """End read-only mode for the tenant (None: the global switch); the switch that was on, if any."""
    async with conn.transaction():
        cur = await conn.execute(
            "DELETE FROM read_only_switch WHERE coalesce(tenant_id, 0) = coalesce(%s::bigint, 0)"
            " RETURNING tenant_id, reason, set_by, set_at",
            (tenant_id,),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        switch = Switch.from_row(row)
        await _audit(conn, "read_only.off", switch, actor)
    return switch


async def _audit(conn: AsyncConn, action: str, switch: Switch, actor: Actor) -> None:
    details = {"scope": switch.scope, "reason": switch.reason, "since": switch.set_at.isoformat()}
    await audit.record(conn, actor.principal, action, "read_only", switch.scope, details, actor.trace_id,
                       tenant_id=switch.tenant_id, actor=None if actor.principal else actor.name)
    await conn.execute("SELECT pg_notify(%s, %s)", (READ_ONLY_CHANNEL, switch.scope))


class ReadOnlyCache:
    """The switches as one API process sees them: fresh for ``ttl`` seconds, reloaded at once after
    ``invalidate`` (called on every NOTIFY of ``READ_ONLY_CHANNEL``). One reload at a time; when the
    catalog cannot be read, the last known state stays in force."""

    def __init__(self, pool: CatalogPool, ttl: float = DEFAULT_TTL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._ttl = ttl
        self._clock = clock
        self._state: ReadOnlyState | None = None
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()
        self._exported: set[str] = set()

    def invalidate(self, *_: object) -> None:
        self._loaded_at = float("-inf")

    def _fresh(self) -> bool:
        return self._state is not None and self._clock() - self._loaded_at < self._ttl

    async def state(self) -> ReadOnlyState:
        if self._fresh():
            assert self._state is not None
            return self._state
        async with self._lock:
            if not self._fresh():
                await self._reload()
        assert self._state is not None
        return self._state

    async def refresh(self) -> None:
        """Reload now (the sampler calls this so the gauges stay current without traffic)."""
        async with self._lock:
            await self._reload()

    async def _reload(self) -> None:
        started = self._clock()
        try:
            async with self._pool.connection() as conn:
                state = await load(conn)
        except DuckMeshError:
            if self._state is None:
                raise
            log.warning("read_only_reload_failed", exc_info=True)
            # Keep the last known state for another second: requests queued behind this reload
            # use it instead of each waiting for an unreachable catalog in turn.
            self._loaded_at = started - max(self._ttl - RELOAD_RETRY_SECONDS, 0.0)
            return
        self._state, self._loaded_at = state, started
        self._export(state)

    def _export(self, state: ReadOnlyState) -> None:
        metrics.READ_ONLY_GLOBAL.set(1 if state.global_switch else 0)
        current = {str(t) for t in state.tenants}
        for tenant in current:
            metrics.READ_ONLY_TENANT.labels(tenant).set(1)
        for tenant in self._exported - current:
            metrics.READ_ONLY_TENANT.remove(tenant)
        self._exported = current

    async def check_writable(self, tenant_id: TenantId) -> None:
        """Raise ReadOnly (503, retryable, Retry-After) when the tenant may not write now."""
        switch = (await self.state()).switch_for(tenant_id)
        if switch is None:
            return
        metrics.READ_ONLY_REJECTED.labels(str(tenant_id), switch.scope).inc()
        where = "the service is" if switch.tenant_id is None else "this tenant is"
        raise ReadOnly(f"{where} in read-only mode: writes are refused, queries are served ({switch.reason})",
                       scope=switch.scope, reason=switch.reason, since=switch.set_at.isoformat(),
                       retry_after_s=RETRY_AFTER_SECONDS)

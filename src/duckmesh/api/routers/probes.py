"""Health and readiness on every process's HTTP listener, metrics on its metrics listener; no key
needed (scrapers and probes). The readiness checks run on their own threads, so no query or
ingest load can make a probe wait."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from duckmesh.api.context import AppContext, OpsContext
from duckmesh.catalog import migrate
from duckmesh.errors import NotReady
from duckmesh.observability import metrics

router = APIRouter(tags=["operations"])
# Metrics show every tenant's ids and table names: served only on DUCKMESH_METRICS_ADDR.
metrics_router = APIRouter(tags=["operations"])
_PROBE_THREADS = ThreadPoolExecutor(2, thread_name_prefix="duckmesh-probe")


@router.get("/v1/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/v1/ready", responses={503: {}})
async def ready(request: Request) -> dict[str, Any]:
    ctx: AppContext | OpsContext = request.app.state.ctx
    checks: dict[str, str] = {}
    try:
        async with ctx.pool.connection() as conn:
            cur = await conn.execute("SELECT coalesce(max(version), 0) AS v FROM schema_migrations")
            row = await cur.fetchone()
        current = row["v"] if row else 0
        checks["catalog"] = "ok"
        checks["migrations"] = "ok" if current == migrate.latest_version() else f"at {current}"
    except Exception:
        checks["catalog"] = "unreachable"
    try:
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.run_in_executor(_PROBE_THREADS, ctx.store.check_writable), timeout=5)
        checks["object_store"] = "ok"
    except Exception:
        checks["object_store"] = "not writable"
    failed = sorted(name for name, state in checks.items() if state != "ok")
    if failed:
        raise NotReady(f"not ready: {', '.join(failed)}", failed=failed, checks=checks)
    return {"status": "ready", "checks": checks, **await _read_only_mode(ctx)}


async def _read_only_mode(ctx: AppContext | OpsContext) -> dict[str, Any]:
    """Read-only mode is still ready (queries are served); the probe says so without naming tenants."""
    try:
        state = await ctx.read_only.state()
    except Exception:
        return {}
    return {"mode": "read_only" if state.global_switch else "read_write",
            "read_only": {"global": state.global_switch is not None, "tenants": len(state.tenants)}}


@metrics_router.get("/v1/metrics", response_class=Response)
@metrics_router.get("/metrics", response_class=Response, include_in_schema=False)
async def prometheus() -> Response:
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

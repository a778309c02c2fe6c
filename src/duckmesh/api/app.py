"""The FastAPI app factory."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from duckmesh import __version__
from duckmesh.api import console, docs, errors, openapi
from duckmesh.api.context import AppContext, OpsContext
from duckmesh.api.middleware import RequestContextMiddleware
from duckmesh.api.routers import (
    assist,
    backfill,
    dead_letters,
    ingest,
    maintenance,
    ops,
    probes,
    query,
    read_only,
    snapshots,
    tables,
)


def create_app(ctx: AppContext | OpsContext) -> FastAPI:
    """The full API for an ``AppContext``; for a worker process's ``OpsContext`` only the probes:
    health, readiness and metrics."""
    app = _DuckMeshApi(title="DuckMesh", version=__version__, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.ctx = ctx
    errors.install(app)
    docs.install(app)
    if isinstance(ctx, AppContext):
        console.install(app)
    data_routers = (ingest, query, assist, tables, backfill, snapshots, maintenance, dead_letters, ops, read_only)
    for module in (*data_routers, probes) if isinstance(ctx, AppContext) else (probes,):
        app.include_router(module.router)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=ctx.settings.max_body_bytes,
        max_backfill_bytes=ctx.settings.max_backfill_bytes,
    )
    return app


class _DuckMeshApi(FastAPI):
    """FastAPI whose OpenAPI document is ``openapi.document`` (built once, then cached)."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = openapi.document(self)
        return self.openapi_schema

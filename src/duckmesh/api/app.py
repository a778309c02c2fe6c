"""The FastAPI app factory."""

from __future__ import annotations

from fastapi import FastAPI

from duckmesh import __version__
from duckmesh.api import errors
from duckmesh.api.context import AppContext
from duckmesh.api.middleware import RequestContextMiddleware
from duckmesh.api.routers import backfill, dead_letters, ingest, maintenance, ops, query, snapshots, tables


def create_app(ctx: AppContext, *, serve_data_api: bool = True) -> FastAPI:
    """The full API, or (``serve_data_api=False``, for worker processes) only the operations
    endpoints: health, readiness and metrics."""
    app = FastAPI(
        title="DuckMesh",
        version=__version__,
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    errors.install(app)
    data_routers = (ingest, query, tables, backfill, snapshots, maintenance, dead_letters, ops)
    for module in data_routers if serve_data_api else (ops,):
        app.include_router(module.router)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=ctx.settings.max_body_bytes,
        max_backfill_bytes=ctx.settings.max_backfill_bytes,
    )
    return app

"""The FastAPI app factory."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from duckmesh import __version__
from duckmesh.api import console, docs, errors, openapi
from duckmesh.api.context import AppContext, OpsContext
from duckmesh.api.middleware import AuthGate, RequestContextMiddleware
from duckmesh.api.routers import (
    assist,
    backfill,
    dead_letters,
    ingest,
    keys,
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
    data_routers = (ingest, query, assist, tables, backfill, snapshots, maintenance, dead_letters, ops, read_only,
                    keys)
    for module in (*data_routers, probes) if isinstance(ctx, AppContext) else (probes,):
        app.include_router(module.router)
    # GET /v1/tables/ answers 404 JSON, never a redirect built from the Host header.
    app.router.redirect_slashes = False
    routes = _api_routes(app.routes)
    protected: list[BaseRoute] = [route for route in routes if route.path not in PUBLIC_PATHS]
    large: list[BaseRoute] = [route for route in routes if route.path == backfill.ROUTE]
    app.add_middleware(AuthGate, protected=protected)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=ctx.settings.max_body_bytes,
        max_backfill_bytes=ctx.settings.max_backfill_bytes,
        large_body_routes=large,
    )
    return app


def _api_routes(routes: list[BaseRoute]) -> list[APIRoute]:
    """Every endpoint, looking inside included routers."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += _api_routes(route.original_router.routes)
    return found


# Routes that need no key (probes and scrapers).
PUBLIC_PATHS = frozenset({"/v1/health", "/v1/ready"})


def create_metrics_app() -> FastAPI:
    """The metrics listener's app: Prometheus text at /metrics and /v1/metrics, nothing else."""
    app = FastAPI(title="DuckMesh metrics", openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(probes.metrics_router)
    return app


class _DuckMeshApi(FastAPI):
    """FastAPI whose OpenAPI document is ``openapi.document`` (built once, then cached)."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = openapi.document(self)
        return self.openapi_schema
